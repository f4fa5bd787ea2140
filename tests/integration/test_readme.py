"""README promises stay true: its quick-start runs as written and its commands are the real ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _block_after(marker: str, lang: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```", README, re.S)
    assert match, f"README has no ```{lang} block after <!-- {marker} -->"
    return match.group(1)


def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    """The quick-start example executes unchanged in a fresh interpreter and prints 'ok'."""
    script = tmp_path / "quickstart.py"
    script.write_text(_block_after("quickstart", "python"))
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_readme_starts_with_demo_and_test_commands() -> None:
    """The first two shell blocks set up from scratch: one runs `streamload demo`, one pytest."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert "python3 -m venv .venv" in blocks[0] and "streamload demo" in blocks[0]
    assert "python3 -m venv .venv" in blocks[1] and "pytest" in blocks[1]
    assert blocks[1].strip() == _block_after("test-command", "bash").strip()


def test_readme_token_training_loop_runs_as_written(tmp_path: Path) -> None:
    """The token-stream training loop (convert with a tokenizer, blocks, checkpoint, resume)
    executes unchanged and prints 'ok'."""
    script = tmp_path / "tokens.py"
    script.write_text(_block_after("tokens", "python"))
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_readme_mixture_example_runs_as_written(tmp_path: Path) -> None:
    """The README's mixture example (exact batches, a source's second epoch, a checkpoint
    resumed with other weights) runs unchanged in a fresh interpreter and prints 'ok'."""
    script = tmp_path / "mixture.py"
    script.write_text(_block_after("mixture", "python"))
    out = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
