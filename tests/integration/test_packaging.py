"""`pip install .` builds the native module: the wheel carries a compiled `streamload.transport._ring`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_build_compiles_and_ships_native_ring(tmp_path: Path) -> None:
    """A wheel built from a clean copy of the sources contains `_ring` and it imports."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    src = tmp_path / "src"
    for name in files:
        if not (REPO / name).is_file():
            continue
        dest = src / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)],
        check=True,
        timeout=240,
    )
    (wheel,) = wheels.glob("streamload-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("streamload/transport/_ring") and n.endswith(".so") for n in names), (
        names
    )

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = "import streamload.transport._ring as r, streamload; print(r.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert str(target) in out
