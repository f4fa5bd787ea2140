"""Start-up benchmark: what a command or `import streamload` costs before any data moves.

Each command runs in a fresh interpreter, interleaved round-robin so machine load falls on all
of them alike; reported are the median wall time and the time over a bare interpreter
(`python -c pass`, the floor nothing can go below) in the same run. `import torch` is the
reference: the metadata commands (`--version`, `config`, `info`, `verify`) and
`import streamload` must not pay for it (issue 17 targets <= 0.3 s for `--version` on an
idle machine). Also reported: the peak RSS of each command (getrusage of the child), since
an import that is avoided also costs no memory.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

MiB = 1 << 20


def write_dataset(root: Path) -> Path:
    """A 10-row dataset for `info`/`verify`, written in a child so this process stays bare."""
    path = root / "startup-ds"
    code = (
        "import sys, streamload as sl\n"
        "with sl.ShardWriter(sys.argv[1], overwrite=True) as w:\n"
        "    [w.write({'id': i, 'text': str(i)}) for i in range(10)]"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=300)
    return path


def commands(dataset: Path, quick: bool) -> dict[str, list[str]]:
    """What to time (quick: the light commands only, no torch: the smoke test stays short)."""
    cli = [sys.executable, "-m", "streamload.cli.main"]
    if quick:
        return {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import streamload": [sys.executable, "-c", "import streamload"],
            "streamload --version": [*cli, "--version"],
            "streamload info": [*cli, "info", str(dataset)],
        }
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import streamload": [sys.executable, "-c", "import streamload"],
        "streamload --version": [*cli, "--version"],
        "streamload config": [*cli, "config"],
        "streamload info": [*cli, "info", str(dataset)],
        "streamload verify": [*cli, "verify", str(dataset)],
        "import torch": [sys.executable, "-c", "import torch"],
    }


def run(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one fresh run of argv."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    return seconds, usage.ru_maxrss * 1024


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="sl-startup-"))
    reps = args.repeats or (1 if args.quick else 7)
    env = {**os.environ, "STREAMLOAD_CACHE_DIR": str(root / "cache")}
    cmds = commands(write_dataset(root), args.quick)
    for argv in cmds.values():  # one untimed round: page cache and .pyc files warm
        run(argv, env)
    seconds: dict[str, list[float]] = {name: [] for name in cmds}
    rss: dict[str, int] = dict.fromkeys(cmds, 0)
    for _ in range(reps):
        for name, argv in cmds.items():
            s, peak = run(argv, env)
            seconds[name].append(s)
            rss[name] = max(rss[name], peak)
    floor = statistics.median(seconds["python -c pass"])
    torch_s = statistics.median(seconds["import torch"]) if "import torch" in seconds else 0.0
    results = []
    for name in cmds:
        r = harness.Result(name, {}, 1, 0)
        r.seconds.extend(seconds[name])
        results.append(r)
        print(name, f"{r.median_s:.3f} s", flush=True)

    def extra(r: harness.Result) -> dict[str, str]:
        return {
            "median s": f"{r.median_s:.3f}",
            "over bare python s": f"{r.median_s - floor:+.3f}",
            "x import torch": f"{r.median_s / torch_s:.2f}" if torch_s else "",
            "peak RSS MiB": f"{rss[r.name] / MiB:.0f}",
        }

    harness.report(
        "Start-up: commands and imports in a fresh interpreter",
        results,
        args,
        extra=extra,
        notes=f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs."
        " Commands interleaved round-robin; 'over bare python' subtracts the median of"
        " `python -c pass` in the same run.",
    )


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
