"""The ``streamload`` command line: one small function per subcommand, the work in library modules.

``main(argv) -> exit code``. Exit codes: 0 success; 1 the command ran and found a problem
(``verify`` found a bad shard); 2 usage errors and any `StreamloadError`, printed as one line
``streamload: error: <message>`` on stderr with no traceback (``--debug`` shows it), the
library's keyword arguments named as the subcommand's flags (``--overwrite``, not
``overwrite=True``); 141 when the reader of stdout went away (``streamload config | head``),
silently. Output meant
for machines is available with ``--json``; progress bars go to stderr and follow the
``progress`` setting.

A subcommand is added by writing ``_cmd_<name>(args) -> int`` and registering its parser in
`build_parser`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from streamload import __version__, config
from streamload.errors import StreamloadError
from streamload.sizes import format_size

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell tool cut off by `| head` exits with


def _print_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> None:
    """Print rows as left-aligned columns separated by two spaces."""
    all_rows = [list(header)] if header else []
    all_rows += [list(r) for r in rows]
    if not all_rows:
        return
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    for row in all_rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _show_value(value: Any, kind: str) -> str:
    if value is None:
        return "none"
    if kind == "size_or_auto" and value == 0:
        return "auto"
    if kind in ("size", "size_or_auto"):
        return f"{value} ({format_size(value)})"
    if kind == "bool":
        return "true" if value else "false"
    return str(value)


# --- subcommands ----------------------------------------------------------------------------


def _cmd_config(args: argparse.Namespace) -> int:
    """Print every effective setting, its value and where it came from."""
    cfg = args.cfg
    if args.json:
        out = {
            s.name: {"value": _json_value(cfg, s), "source": cfg.source(s.name), "doc": s.doc}
            for s in config.settings()
        }
        print(json.dumps(out, indent=2))
        return EXIT_OK
    rows = [
        (s.name, _show_value(getattr(cfg, s.name), s.kind), cfg.source(s.name))
        for s in config.settings()
    ]
    _print_table(rows, header=("key", "value", "source"))
    return EXIT_OK


def _json_value(cfg: Any, setting: Any) -> Any:
    """A setting's value as `streamload config --json` shows it: what a config file would say
    (``"auto"`` for an automatic size, not its internal 0)."""
    value = getattr(cfg, setting.name)
    return "auto" if setting.kind == "size_or_auto" and value == 0 else value


def _cmd_info(args: argparse.Namespace) -> int:
    """Print a dataset's schema, sample and shard counts, size and format."""
    from streamload.format.index import load_index
    from streamload.store.retry import RetryPolicy

    index = load_index(args.url, policy=RetryPolicy.from_config(args.cfg))
    columns = [c.to_json() for c in index.schema.columns]
    if args.json:
        out = {
            "url": args.url,
            "format": index.format,
            "format_version": index.format_version,
            "num_samples": index.num_samples,
            "num_shards": len(index.shards),
            "total_bytes": index.total_bytes,
            "schema": columns,
            "metadata": index.metadata,
            "shards": [s.to_json() for s in index.shards],
        }
        print(json.dumps(out, indent=2))
        return EXIT_OK
    _print_table(
        [
            ("dataset", args.url),
            ("format", f"{index.format} (format_version {index.format_version})"),
            ("samples", f"{index.num_samples:,}"),
            ("shards", f"{len(index.shards):,}"),
            ("bytes", f"{format_size(index.total_bytes)} ({index.total_bytes:,} B)"),
        ]
    )
    print()
    _print_table(
        [
            (
                c["name"],
                c["kind"],
                c.get("dtype") or "-",
                _show_shape(c["shape"]) if "shape" in c else "-",
            )
            for c in columns
        ],
        header=("column", "kind", "dtype", "shape"),
    )
    if index.metadata:
        print()
        _print_table(
            [(key, _metadata_text(value)) for key, value in index.metadata.items()],
            header=("metadata", "value"),
        )
    return EXIT_OK


def _metadata_text(value: Any, limit: int = 200) -> str:
    """One index.json metadata value on one line (lists joined; long values cut, with a count)."""
    if isinstance(value, list):
        text = ", ".join(str(v) for v in value)
        if len(text) > limit:
            text = text[: limit - 3] + "..."
        return f"{text} ({len(value)})"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show_shape(shape: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _cmd_verify(args: argparse.Namespace) -> int:
    """Recompute every shard's checksum; name each bad shard; exit 1 if any is bad."""
    from streamload.dataset.inspect import ShardCheck, verify_dataset
    from streamload.format.index import load_index
    from streamload.progress import progress
    from streamload.store.retry import RetryPolicy

    policy = RetryPolicy.from_config(args.cfg)
    index = load_index(args.url, policy=policy)
    shard_bytes = {s.name: s.bytes for s in index.shards}
    bar = progress(
        total=index.total_bytes, desc="verify", unit="B", unit_scale=True, mode=args.cfg.progress
    )
    with bar:

        def advance(check: ShardCheck) -> None:
            bar.update(shard_bytes[check.shard])

        checks = verify_dataset(args.url, on_shard=advance, policy=policy)
    bad = [c for c in checks if not c.ok]
    for check in bad:
        if check.actual is None:
            print(f"BAD  {check.shard}: missing")
        else:
            print(
                f"BAD  {check.shard}: checksum mismatch (index says {check.expected},"
                f" file hashes to {check.actual}; corrupt or truncated)"
            )
    if bad:
        print(f"{len(bad)} of {len(checks)} shards bad in {args.url}")
        return EXIT_PROBLEM
    print(f"all {len(checks)} shards OK ({format_size(index.total_bytes)}) in {args.url}")
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    """Convert Parquet/JSONL/CSV/Arrow/HF/image-folder/LMDB data into streamload shards."""
    from streamload.write.convert import convert

    index = convert(
        args.src,
        args.dst,
        format=args.format,
        shard_size=args.shard_size,
        compression=args.compression,
        source_format=args.source_format,
        overwrite=args.overwrite,
        mode="append" if args.append else "create",
        engine=args.engine,
    )
    print(
        f"wrote {index.num_samples:,} samples in {len(index.shards):,} {index.format} shards"
        f" ({format_size(index.total_bytes)}) to {args.dst}"
    )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    """Write a synthetic corpus, stream it with StreamLoader and DataLoader, compare."""
    from streamload.cli import demo

    results = demo.run(
        size=args.size,
        directory=args.dir,
        batch_size=args.batch_size,
        keep=args.keep,
        quick=args.quick,
        repeats=args.repeats,
        remote=args.remote,
        progress_mode=args.cfg.progress,
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        demo.print_results(results)
    return EXIT_OK if results["ok"] else EXIT_PROBLEM


def _worker_counts(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated worker counts such as 0,1,2, got {text!r}"
        ) from None


def _cmd_bench(args: argparse.Namespace) -> int:
    """Stream a dataset per worker count without a model; print a table, save JSON and a plot."""
    from streamload.cli import bench

    runs = bench.run_bench(
        args.url,
        workers=args.workers,
        batch_size=args.batch_size,
        epochs=args.epochs,
        vs_dataloader=args.vs_dataloader,
        interval=args.interval,
        progress_mode=args.cfg.progress,
    )
    rows = bench.table(runs)
    _print_table(rows[1:], rows[0])
    if args.out:
        json_path, _png, note = bench.save(runs, args.out)
        print(f"results: {json_path}")
        print(note)
    return EXIT_OK


def _cmd_cache(args: argparse.Namespace) -> int:
    """``cache ls`` (cached shards), ``cache du`` (usage against cache_limit), ``cache clear``."""
    import os
    import time

    from streamload.cache.disk import DiskCache

    cfg = args.cfg
    cache = DiskCache(cfg.cache_dir, cfg.cache_limit)
    if args.action == "clear":
        removed, freed = cache.clear()
        print(f"removed {removed} shard(s), {format_size(freed)} from {cache.cache_dir}")
        return EXIT_OK
    sources = cache.datasets()
    entries = cache.entries()
    if args.action == "du":
        per: dict[str, list[int]] = {}
        for e in entries:
            if e.fixed:  # plan files, index copies: in the total, not shards of a dataset
                continue
            n_bytes = per.setdefault(sources.get(os.path.dirname(e.path), "?"), [0, 0])
            n_bytes[0] += 1
            n_bytes[1] += e.bytes
        used = sum(e.bytes for e in entries)
        if args.json:
            out = {
                "cache_dir": cache.cache_dir,
                "cache_limit": cache.cache_limit,
                "bytes": used,
                "datasets": {url: {"shards": n, "bytes": b} for url, (n, b) in per.items()},
            }
            print(json.dumps(out, indent=2))
            return EXIT_OK
        _print_table(
            [(url, str(n), format_size(b)) for url, (n, b) in sorted(per.items())],
            header=("dataset", "shards", "bytes"),
        )
        print(
            f"total {format_size(used)} of cache_limit {format_size(cache.cache_limit)}"
            f" in {cache.cache_dir}"
        )
        return EXIT_OK
    rows: list[dict[str, Any]] = []
    for e in entries:
        if e.fixed:  # plan files, index copies: no shards of a dataset
            continue
        name = os.path.basename(e.path).split("-", 1)[-1]
        if e.temp:
            name = name.split(".tmp.", 1)[0] + " (downloading)"
        rows.append(
            {
                "dataset": sources.get(os.path.dirname(e.path), "?"),
                "shard": name,
                "bytes": e.bytes,
                "last_used": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.mtime)),
                "path": e.path,
            }
        )
    rows.sort(key=lambda r: (r["dataset"], r["shard"]))  # by dataset URL, then shard name
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    _print_table(
        [(r["dataset"], r["shard"], format_size(r["bytes"]), r["last_used"]) for r in rows],
        header=("dataset", "shard", "bytes", "last used"),
    )
    return EXIT_OK


# --- parser and entry point -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``streamload`` command (one subparser per subcommand)."""
    # --debug is accepted before or after the subcommand; SUPPRESS keeps a subparser from
    # resetting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser = argparse.ArgumentParser(
        prog="streamload",
        description="Stream sharded Arrow/LMDB datasets into PyTorch, fast and in bounded memory.",
    )
    parser.add_argument("--version", action="version", version=f"streamload {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("config", parents=[common], help="show effective settings and their sources")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("info", parents=[common], help="describe a dataset")
    p.add_argument("url", help="dataset directory or URL")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("verify", parents=[common], help="check every shard's checksum")
    p.add_argument("url", help="dataset directory or URL")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "convert", parents=[common], help="convert Parquet/JSONL/CSV/Arrow/images/LMDB to shards"
    )
    p.add_argument("src", help="source file or directory (local path or URL)")
    p.add_argument("dst", help="destination dataset directory (local path or URL)")
    p.add_argument("--format", choices=("arrow", "lmdb"), default="arrow", help="shard format")
    p.add_argument("--shard-size", default=None, help="target shard size, e.g. 256MB")
    p.add_argument("--compression", default=None, help="arrow compression: zstd or lz4")
    p.add_argument(
        "--source-format",
        default=None,
        choices=("parquet", "jsonl", "csv", "arrow", "hf", "lmdb", "imagefolder", "streamload"),
        help="source kind (default: recognised from the name or contents)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a complete dataset at DST")
    p.add_argument(
        "--append", action="store_true", help="add to the dataset at DST (a new index version)"
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: read and write in parallel Ray Data tasks (needs streamload[ray])",
    )
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "demo", parents=[common], help="benchmark StreamLoader against DataLoader on synthetic data"
    )
    p.add_argument("--size", default="300MB", help="corpus size (default 300MB)")
    p.add_argument("--dir", default=None, help="parent directory of the temporary corpus")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="passes per loader (default 3)")
    p.add_argument("--keep", action="store_true", help="keep the corpus after the run")
    p.add_argument("--quick", action="store_true", help="tiny corpus (for smoke tests)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--remote",
        default=None,
        metavar="URL",
        help="write the corpus under this s3:// or gs:// prefix and stream it back through the"
        " shard cache (endpoint and credentials from the usual AWS_*/GOOGLE_* settings)",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "bench", parents=[common], help="stream a dataset without a model: throughput and memory"
    )
    p.add_argument("url", help="dataset directory or URL")
    p.add_argument(
        "--workers", type=_worker_counts, default=[0, 1, 2], help="worker counts (default 0,1,2)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    p.add_argument(
        "--vs-dataloader",
        action="store_true",
        help="also run torch DataLoader over the same dataset and print the ratio",
    )
    p.add_argument("--out", default=None, help="directory for bench.json and bench.png")
    p.add_argument(
        "--interval", type=float, default=0.5, help="memory sampling interval, s (default 0.5)"
    )
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "cache", parents=[common], help="inspect or empty the shard cache (config cache_dir)"
    )
    p.add_argument(
        "action",
        choices=("ls", "du", "clear"),
        help="ls: cached shards; du: bytes per dataset and total vs cache_limit; clear: delete"
        " every shard no running process is reading",
    )
    p.add_argument("--json", action="store_true", help="print JSON (ls, du)")
    p.add_argument(
        "--cache-dir", default=None, help="the cache directory (default: setting cache_dir)"
    )
    p.set_defaults(func=_cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``streamload`` command.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        The exit code (0 ok, 1 a problem found, 2 an error).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        # Resolved once: every subcommand reads args.cfg; flags that are settings win.
        cfg = args.cfg = config.load(cache_dir=getattr(args, "cache_dir", None))
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("streamload").setLevel(cfg.log_level)
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except StreamloadError as exc:
        if args.debug:
            raise
        print(f"streamload: error: {_in_flags(str(exc), args.command)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`streamload config --json | head`): stop quietly, as a shell
        # tool does; stdout now points at /dev/null so the exit flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("streamload: interrupted", file=sys.stderr)
        return 130


# Library wording -> the command line's, per subcommand: an error raised by the library names
# its keyword arguments, which the command line spells as flags.
_FLAG_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "convert": (
        ("pass overwrite=True", "pass --overwrite"),
        ("overwrite=True", "--overwrite"),
        ("mode='append'", "--append"),
        ("ShardWriter shard_size", "--shard-size"),
        ("ShardWriter compression", "--compression"),
        ("ShardDatasink shard_size", "--shard-size"),
        ("ShardDatasink compression", "--compression"),
        ("convert(engine='ray')", "convert --engine ray"),
        ("with engine='local'", "without --engine ray"),
        ("use None, 'zstd' or 'lz4'", "use none, zstd or lz4"),
        ("use compression=None", "leave out --compression"),
        ("pass source_format=", "pass --source-format"),
    ),
}


def _in_flags(message: str, command: str) -> str:
    """``message`` with the library's keyword arguments named as ``command``'s flags."""
    for words, flag in _FLAG_WORDS.get(command, ()):
        message = message.replace(words, flag)
    return message


if __name__ == "__main__":
    sys.exit(main())
