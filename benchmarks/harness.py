"""Tiny shared benchmark harness: warm-up, repeats, median, a printed table, JSON and RESULTS.md.

Every benchmark script builds on it the same way:

    parser = harness.parser("what this measures")
    args = parser.parse_args()
    result = harness.measure("name", fn, items=n, nbytes=b, params={...}, warmup=.., repeats=..)
    harness.report("Title", [result, ...], args)

`fn()` performs `items` operations moving `nbytes` bytes; the harness times each repeat with
`time.perf_counter` and reports the median (robust on a noisy shared machine) plus min/max.
`--quick` is the smoke-test mode every script must support (seconds, not minutes); `--json PATH`
writes the raw results; `--results-md` appends the table to benchmarks/RESULTS.md with the date
and machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Result:
    """One measured configuration: per-repeat wall times and the work each repeat did."""

    name: str
    params: dict[str, Any]
    items: int
    nbytes: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def items_per_s(self) -> float:
        return self.items / self.median_s

    @property
    def gb_per_s(self) -> float:
        return self.nbytes / self.median_s / 1e9

    @property
    def us_per_item(self) -> float:
        return self.median_s / self.items * 1e6

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            median_s=self.median_s,
            items_per_s=self.items_per_s,
            gb_per_s=self.gb_per_s,
            us_per_item=self.us_per_item,
        )
        return out


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke-test mode: tiny sizes, one repeat")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 1)")
    p.add_argument("--json", type=Path, default=None, help="write raw results to this file")
    p.add_argument(
        "--results-md", action="store_true", help=f"append the table to {RESULTS_MD.name}"
    )
    return p


def repeats(args: argparse.Namespace) -> int:
    return args.repeats or (1 if args.quick else 5)


def measure(
    name: str,
    fn: Callable[[], object],
    *,
    items: int,
    nbytes: int,
    params: dict[str, Any] | None = None,
    warmup: int = 1,
    repeats: int = 5,
) -> Result:
    """Run `fn` `warmup` times untimed, then `repeats` times timed; return the `Result`."""
    for _ in range(warmup):
        fn()
    result = Result(name, dict(params or {}), items, nbytes)
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        result.seconds.append(time.perf_counter() - start)
    return result


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def table(
    results: Sequence[Result], extra: Callable[[Result], dict[str, str]] | None = None
) -> str:
    """A markdown table: name, params, items/s, GB/s, us/item (+ `extra` columns)."""
    rows = []
    for r in results:
        row = {"benchmark": r.name}
        row.update(
            {k: _human_bytes(v) if k.endswith("bytes") else str(v) for k, v in r.params.items()}
        )
        row.update(
            {
                "items/s": f"{r.items_per_s:,.0f}",
                "GB/s": f"{r.gb_per_s:.3f}",
                "us/item": f"{r.us_per_item:,.1f}",
                "spread": f"{min(r.seconds) / r.median_s:.2f}-{max(r.seconds) / r.median_s:.2f}",
            }
        )
        if extra:
            row.update(extra(r))
        rows.append(row)
    headers = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(row.get(h, "") for h in headers) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def report(
    title: str,
    results: Sequence[Result],
    args: argparse.Namespace,
    *,
    extra: Callable[[Result], dict[str, str]] | None = None,
    notes: str = "",
    timing: str | None = None,
) -> None:
    """Print the table; write JSON and append to RESULTS.md if asked.

    ``timing``: how the figures were timed, for the section's first line, when the script does
    not time ``--repeats`` repeats itself (default "median of N repeats")."""
    text = table(results, extra)
    print(f"\n{title}\n\n{text}\n")
    if notes:
        print(notes)
    if args.json:
        payload = {"title": title, "machine": machine(), "results": [r.as_dict() for r in results]}
        args.json.write_text(json.dumps(payload, indent=2))
    if args.results_md:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        mode = " (--quick)" if args.quick else ""
        timing = timing or f"median of {repeats(args)} repeats"
        section = f"\n## {title}{mode}\n\n{stamp}, {machine()}, {timing}.\n\n{text}\n"
        if notes:
            section += f"\n{notes}\n"
        if not RESULTS_MD.exists():
            RESULTS_MD.write_text(
                "# Benchmark results\n\nAppended by `benchmarks/*.py --results-md`.\n"
            )
        with RESULTS_MD.open("a") as f:
            f.write(section)
