"""The ring core under sanitizers: TSAN, ASan+UBSan, memory-order mutants, and the ASan extension.

* tests/native/ring_stress.c runs a producer and a consumer *thread* over the real core (TSAN
  cannot follow memory shared between processes, so threads are the only way to check the
  memory-ordering contract); tiny rings force wraps, PADs and both sleep paths.
* Mutation check: weakening any one of the four hand-off orderings (head store/load, tail
  store/load) to relaxed must make TSAN report, proving the harness is not blind there; the
  harness also counts waits that slept a whole slice although they could have gone on (missed
  or late wake-ups), which the producer's wake-up hysteresis must keep at zero.
* The Python extension is rebuilt with STREAMLOAD_SANITIZE=address,undefined into tmp_path and
  tests/native/ring_workload.py drives the binding with libasan preloaded.

Each binary is compiled with gcc into tmp_path; every run has a timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
NATIVE = REPO / "native"
HARNESS = REPO / "tests" / "native" / "ring_stress.c"
WORKLOAD = REPO / "tests" / "native" / "ring_workload.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"),
]

SANITIZER_ENV = {
    "TSAN_OPTIONS": "halt_on_error=1 exitcode=66 second_deadlock_stack=1",
    "ASAN_OPTIONS": "halt_on_error=1 detect_leaks=1 abort_on_error=0",
    "UBSAN_OPTIONS": "halt_on_error=1 print_stacktrace=1",
}


def build_harness(tmp_path: Path, name: str, flags: list[str]) -> Path:
    exe = tmp_path / name
    cmd = ["gcc", "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", f"-I{NATIVE}"]
    cmd += [*flags, str(HARNESS), str(NATIVE / "ring.c"), "-o", str(exe), "-lpthread"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return exe


def run_harness(
    exe: Path, capacity: int, records: int, seed: int
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(exe), str(capacity), str(records), str(seed), "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **SANITIZER_ENV},
    )


# Tiny rings force a wrap every few records and constant blocking; 64 KiB lets records stream.
RUNS = [(256, 60000, 1), (1024, 60000, 2), (1 << 16, 20000, 3)]


@pytest.mark.parametrize(("capacity", "records", "seed"), RUNS)
def test_stress_harness_is_clean_under_thread_sanitizer(
    tmp_path: Path, capacity: int, records: int, seed: int
) -> None:
    """Two threads over the real core: every record verified, no TSAN report, and (wake-up
    hysteresis) no side sleeping out its wait slice while it could have gone on."""
    exe = build_harness(tmp_path, "stress_tsan", ["-fsanitize=thread"])
    result = run_harness(exe, capacity, records, seed)
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-4000:]
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr
    counts = dict(field.split("=") for field in result.stdout.split()[1:])
    waits = int(counts["producer_waits"]) + int(counts["consumer_waits"])
    missed = int(counts["producer_missed_wakes"]) + int(counts["consumer_missed_wakes"])
    # A wake delayed past a 50 ms slice by the scheduler counts too: allow a rare one.
    assert missed <= max(2, waits // 100), result.stdout


@pytest.mark.parametrize(("capacity", "records", "seed"), RUNS)
def test_stress_harness_is_clean_under_address_and_ub_sanitizers(
    tmp_path: Path, capacity: int, records: int, seed: int
) -> None:
    """The same harness under ASan+UBSan: no out-of-bounds access, leak or undefined behaviour."""
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    exe = build_harness(tmp_path, "stress_asan", flags)
    result = run_harness(exe, capacity, records, seed)
    assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, result.stderr[
        -4000:
    ]
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr


@pytest.mark.parametrize(
    "mutant",
    [
        "SL_ORDER_HEAD_STORE=memory_order_relaxed",
        "SL_ORDER_HEAD_LOAD=memory_order_relaxed",
        "SL_ORDER_TAIL_STORE=memory_order_relaxed",
        "SL_ORDER_TAIL_LOAD=memory_order_relaxed",
    ],
)
def test_thread_sanitizer_catches_a_weakened_memory_order(tmp_path: Path, mutant: str) -> None:
    """Weakening one hand-off ordering to relaxed makes TSAN report a data race."""
    exe = build_harness(tmp_path, "stress_mutant", ["-fsanitize=thread", f"-D{mutant}"])
    result = run_harness(exe, 1024, 20000, 4)
    assert result.returncode != 0
    assert "ThreadSanitizer: data race" in result.stderr


def test_python_extension_is_clean_under_address_sanitizer(tmp_path: Path) -> None:
    """An ASan+UBSan build of streamload.transport._ring runs the binding workload without a report."""
    env = {**os.environ, "STREAMLOAD_SANITIZE": "address,undefined"}
    subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=240,
    )
    (extension,) = (tmp_path / "lib" / "streamload" / "transport").glob("_ring*.so")
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    run_env = {
        **os.environ,
        **SANITIZER_ENV,
        "LD_PRELOAD": libasan,
        # CPython itself is not built for leak checking: its arenas would drown the report.
        "ASAN_OPTIONS": "halt_on_error=1 detect_leaks=0",
    }
    result = subprocess.run(
        [sys.executable, str(WORKLOAD), str(extension)],
        capture_output=True,
        text=True,
        timeout=240,
        env=run_env,
    )
    assert "AddressSanitizer" not in result.stderr and "runtime error" not in result.stderr, (
        result.stderr[-4000:]
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]
