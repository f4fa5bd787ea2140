"""Start-up stays light: `import streamload` and the CLI's metadata commands never import torch.

torch alone takes ~1.5 s to import on an idle 2-core machine (far more under load), so
``streamload --version``, ``info``, ``verify``, ``config`` and ``cache`` must not pay for it,
and a plain ``import streamload`` defers every heavy public name to its first use. Each check
runs in a fresh interpreter and reads its ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "pyarrow", "numpy")


def _modules_after(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; which heavy modules it loaded, and what it printed."""
    probe = f"""
import json, sys
{code}
print(json.dumps({{"loaded": [m for m in {HEAVY!r} if m in sys.modules], "out": OUT}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_streamload_defers_torch_and_keeps_every_public_name() -> None:
    """`import streamload` loads no torch, pyarrow or numpy; every name in __all__ still
    resolves (and only then pulls in what it needs)."""
    result = _modules_after(
        """
import streamload as sl
before = [m for m in ("torch", "pyarrow", "numpy") if m in sys.modules]
names = sorted(n for n in sl.__all__ if getattr(sl, n, None) is None)
from streamload import StreamLoader, StreamingDataset, Blobs, convert, ShardWriter
OUT = {"before": before, "missing": names, "dir": sorted(set(sl.__all__) - set(dir(sl))),
       "callable": callable(sl.convert)}
"""
    )
    out = result["out"]
    assert isinstance(out, dict)
    assert out["before"] == []
    assert out["missing"] == [] and out["dir"] == []
    assert out["callable"] is True  # sl.convert is the function, not the module
    assert "torch" in result["loaded"]  # StreamLoader needed it, once asked for


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("startup") / "ds"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, streamload as sl\n"
            "with sl.ShardWriter(sys.argv[1]) as w:\n"
            "    [w.write({'id': i, 'text': str(i)}) for i in range(10)]",
            str(root),
        ],
        check=True,
        timeout=120,
    )
    return root


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["config"], ["info", "{ds}"], ["verify", "{ds}"], ["cache", "du"]],
    ids=lambda argv: argv[0],
)
def test_metadata_commands_do_not_import_torch(
    argv: list[str], dataset: Path, tmp_path: Path
) -> None:
    """`streamload --version|config|info|verify|cache` run without importing torch."""
    args = [a.format(ds=dataset) for a in argv]
    result = _modules_after(
        """
import contextlib, io
from streamload.cli.main import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:  # argparse's --version exits
        code = exc.code
OUT = {"code": code, "text": buf.getvalue()}
""",
        *args,
        env={"STREAMLOAD_CACHE_DIR": str(tmp_path / "cache")},
    )
    out = result["out"]
    assert isinstance(out, dict) and out["code"] == 0, out
    assert "torch" not in result["loaded"], result
