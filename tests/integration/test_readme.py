"""README promises stay true: its code runs as written, its tables and lists are the code's, its
figures are the recorded benchmark results, and each of its claims names the test that checks it.

The checks are generic, so a section added later is checked without editing this module:

- every ```python block runs in a fresh interpreter, warnings as errors (``print("ok")`` at its
  end must be reached), unless a ``<!-- sketch: why -->`` marker says it needs what a test
  cannot have (a cluster, a bucket, your tokenizer); `RUN_ELSEWHERE` names blocks another test
  runs (the checkpoint recipe in tests/integration/test_resume.py);
- every block, sketches included, and every inline code span that is Python names only
  streamload modules, classes, functions, methods and attributes that exist, and calls them
  with arguments their signatures take (`_check_api`; ``loader``, ``ds``, ``writer``, ... stand
  for instances, `INSTANCE_NAMES`);
- every ``streamload CMD --flag`` shown, inline or in a shell block, is a subcommand and one of
  its flags, and every lone ``--flag`` span is some subcommand's flag;
- the configuration table lists every setting, in order, with the default the code has; every
  ``STREAMLOAD_*`` variable named is one streamload reads (or a typo it warns about), and every
  ``key = value`` shown (```toml blocks, inline) is a setting whose parser takes that value;
- the error hierarchy, the ``loader.stats()`` keys and the package layout it names are the ones
  that exist;
- the benchmark figures it quotes are the rows of benchmarks/RESULTS.md;
- every prose claim in `CLAIMS` is still in the README and its test still exists.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import dataclasses
import difflib
import importlib
import inspect
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import streamload as sl
from streamload.cli.main import build_parser

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
RESULTS = (REPO / "benchmarks" / "RESULTS.md").read_text()
# Warnings are errors in the examples, except DataLoader's too-many-workers warning: it depends on
# the CPUs of the machine the tests run on (a one-core cpuset warns for num_workers=2).
CPU_COUNT_WARNING = "ignore:This DataLoader will create:UserWarning"
# One paragraph per line, so a phrase matches across the README's line breaks.
PROSE = " ".join(README.split())


def _block_after(marker: str, lang: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```", README, re.S)
    assert match, f"README has no ```{lang} block after <!-- {marker} -->"
    return match.group(1)


def _run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "block.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, "-W", "error", "-W", CPU_COUNT_WARNING, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )


# -- code blocks ------------------------------------------------------------------------------------

# Blocks run by another test (marker -> the test that runs it).
RUN_ELSEWHERE = {
    "checkpoint": "tests/integration/test_resume.py::test_readme_checkpoint_recipe_runs_as_written",
}


@dataclasses.dataclass(frozen=True)
class _Block:
    """A fenced block of the README: its language, the marker comment before it, its code."""

    lang: str
    marker: str  # "" when unmarked; "sketch: ..." for a block not to run
    code: str
    line: int

    @property
    def name(self) -> str:
        return self.marker.split(":")[0] or f"line-{self.line}"


def _blocks(lang: str) -> list[_Block]:
    found = []
    for match in re.finditer(r"(?:<!-- ([^>]*?) -->\s*)?```(\w*)\n(.*?)```", README, re.S):
        if match.group(2) == lang:
            line = README.count("\n", 0, match.start(2)) + 1
            found.append(_Block(lang, (match.group(1) or "").strip(), match.group(3), line))
    return found


def _runnable() -> list[_Block]:
    return [
        b
        for b in _blocks("python")
        if not b.marker.startswith("sketch") and b.name not in RUN_ELSEWHERE
    ]


def test_blocks_not_run_here_are_run_elsewhere_or_say_why() -> None:
    """A ```python block is run below unless another test runs it (that test exists) or a
    ``<!-- sketch: why -->`` marker gives the reason it cannot run."""
    blocks = _blocks("python")
    assert len(blocks) >= 4
    for marker, test in RUN_ELSEWHERE.items():
        assert marker in [b.name for b in blocks], marker
        path, name = test.split("::")
        assert f"def {name}(" in (REPO / path).read_text(), test
    for block in blocks:
        if block.marker.startswith("sketch"):
            assert len(block.marker.split(":", 1)[-1].strip()) > 5, f"line {block.line}: why?"


@pytest.mark.parametrize("block", _runnable(), ids=lambda b: b.name)
def test_python_block_runs_as_written(block: _Block, tmp_path: Path) -> None:
    """The block runs unchanged in a fresh interpreter, warnings as errors, to its end."""
    out = _run_python(block.code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    if 'print("ok")' in block.code:
        assert out.stdout.strip().endswith("ok"), out.stdout[-1000:]


def test_readme_starts_with_demo_and_test_commands() -> None:
    """The first two shell blocks set up from scratch: one runs `streamload demo`, one pytest."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert "python3 -m venv .venv" in blocks[0] and "streamload demo" in blocks[0]
    assert "python3 -m venv .venv" in blocks[1] and "pytest" in blocks[1]
    assert blocks[1].strip() == _block_after("test-command", "bash").strip()
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text()  # "pins torch to 2.13.0"


def test_the_readme_describes_what_exists_not_a_roadmap() -> None:
    """Object stores, the cache, LMDB and converters are shipped: nothing is 'on the roadmap'."""
    assert "roadmap" not in README.lower()
    assert "next on the" not in PROSE


# -- names and calls ------------------------------------------------------------------------------

# Names the README uses for instances of streamload classes (loader.stats(), ds.set_epoch(...)).
INSTANCE_NAMES = {
    "loader": "streamload.StreamLoader",
    "ds": "streamload.StreamingDataset",
    "dataset": "streamload.StreamingDataset",
    "writer": "streamload.ShardWriter",
    "exporter": "streamload.StatsExporter",
    "sink": "streamload.ray.ShardDatasink",
}
_UNKNOWN = object()  # a value the check cannot follow (a local, a call's result)


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class _Instance:
    """An instance of ``cls`` (its attributes are the class's, or set on ``self``)."""

    cls: type


class _ApiCheck(ast.NodeVisitor):
    """Resolves every streamload name an expression or block uses and binds every call to a
    streamload callable against its signature; `problems` collects what does not exist or fit."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.roots: dict[str, Any] = {"sl": sl, "streamload": sl}
        self.roots |= {name: getattr(sl, name) for name in sl.__all__}
        self.roots |= {name: _Instance(_import(cls)) for name, cls in INSTANCE_NAMES.items()}
        self.problems: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == "streamload":
                module = importlib.import_module(alias.name)
                self.roots[alias.asname or "streamload"] = module if alias.asname else sl

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.module.split(".")[0] == "streamload":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    self.problems.append(f"{self.where}: {node.module} has no {alias.name}")
                else:
                    self.roots[alias.asname or alias.name] = getattr(module, alias.name)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.resolve(node)

    def visit_Call(self, node: ast.Call) -> None:
        target = self.resolve(node.func)
        if target is not _UNKNOWN and not any(k.arg is None for k in node.keywords):
            self.bind(node, target)
        for child in [*node.args, *(k.value for k in node.keywords)]:
            self.visit(child)

    def resolve(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Name):
            return self.roots.get(node.id, _UNKNOWN)
        if not isinstance(node, ast.Attribute):
            self.visit(node)
            return _UNKNOWN
        base = self.resolve(node.value)
        if base is _UNKNOWN:
            return _UNKNOWN
        name = f"{ast.unparse(node.value)}.{node.attr}"
        if isinstance(base, types.ModuleType):
            if hasattr(base, node.attr):
                return getattr(base, node.attr)
            try:
                return importlib.import_module(f"{base.__name__}.{node.attr}")
            except ImportError:
                self.problems.append(f"{self.where}: {name} does not exist")
                return _UNKNOWN
        cls = base.cls if isinstance(base, _Instance) else base
        if not isinstance(cls, type):
            return _UNKNOWN
        if hasattr(cls, node.attr):
            value = inspect.getattr_static(cls, node.attr)
            if isinstance(base, _Instance) and inspect.isfunction(value):
                return getattr(cls, node.attr).__get__(object.__new__(cls))  # bound: no self
            return getattr(cls, node.attr) if not isinstance(base, _Instance) else _UNKNOWN
        source = "".join(inspect.getsource(c) for c in cls.__mro__ if c.__module__ != "builtins")
        if isinstance(base, _Instance) and re.search(rf"self\.{node.attr}\b\s*(:|=)", source):
            return _UNKNOWN  # an instance attribute set in __init__
        self.problems.append(f"{self.where}: {name} ({cls.__qualname__}) has no {node.attr}")
        return _UNKNOWN

    def bind(self, node: ast.Call, target: Any) -> None:
        if not callable(target) or isinstance(target, _Instance):
            return
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return
        positional = [None] * len(node.args)
        if any(isinstance(a, ast.Starred) for a in node.args):
            positional = []
        try:
            signature.bind_partial(*positional, **{k.arg: None for k in node.keywords if k.arg})
        except TypeError as exc:
            self.problems.append(f"{self.where}: {ast.unparse(node)[:120]}: {exc}")


def _inline_code() -> list[str]:
    """Every inline code span outside fenced blocks, whitespace-normalised."""
    text = re.sub(r"```.*?```", "", README, flags=re.S)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)]


FILE_NAME = re.compile(r"[\w./*-]+\.(py|toml|json|jsonl|md|mdb|lmdb|txt|png|pt|prom)")


def _python_spans() -> list[str]:
    """Inline spans that are Python expressions (file names such as `streamload.toml` aside)."""
    spans = []
    for span in _inline_code():
        if FILE_NAME.fullmatch(span):
            continue
        try:
            ast.parse(span, mode="eval")
        except SyntaxError:
            continue
        spans.append(span)
    return spans


def _check_api(code: str, where: str, mode: str = "exec") -> list[str]:
    checker = _ApiCheck(where)
    checker.visit(ast.parse(code, mode=mode))
    return checker.problems


def test_every_python_block_names_only_what_exists_and_calls_it_as_it_takes() -> None:
    """Each ```python block (sketches too) names existing streamload modules, classes,
    functions, methods and attributes, and passes arguments their signatures accept."""
    problems = []
    for block in _blocks("python"):
        problems += _check_api(block.code, f"README line {block.line}")
    assert not problems, problems


def test_every_inline_python_span_names_only_what_exists_and_calls_it_as_it_takes() -> None:
    """`sl.convert(src, dst, mode="append")`, `loader.load_state_dict(state, allow_append=True)`
    and every other inline span that parses as Python resolve and bind like the blocks."""
    spans = _python_spans()
    assert any(span.startswith("sl.") for span in spans)
    problems = []
    for span in spans:
        problems += _check_api(span, f"`{span}`", mode="eval")
    assert not problems, problems


def test_the_api_check_catches_what_does_not_exist() -> None:
    """The checker itself: a missing function, a misspelled keyword, a method the loader lacks
    and a missing submodule are each reported; correct calls are not."""
    assert _check_api("sl.convert(src, dst, mode='append', engine='ray')", "ok", "eval") == []
    assert _check_api("loader.load_state_dict(state, allow_append=True)", "ok", "eval") == []
    assert _check_api("sl.no_such_function(1)", "a", "eval")
    assert _check_api("sl.convert(src, dst, sharsd_size=1)", "b", "eval")
    assert _check_api("loader.state_dict(1, 2)", "c", "eval")
    assert _check_api("loader.no_such_method()", "d", "eval")
    assert _check_api("ds.epoch", "ok", "eval") == []
    assert _check_api("streamload.format.nothing.load(url)", "f", "eval")


# -- command line -------------------------------------------------------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _shown_commands() -> list[tuple[str, str]]:
    """``(command, rest of the line)`` of every ``streamload CMD ...`` inline or in a shell
    block (``.venv/bin/streamload demo`` too)."""
    shown = re.findall(r"`streamload ([a-z]+)([^`]*)`", PROSE)
    for block in _blocks("bash") + _blocks("sh") + _blocks("console"):
        shown += re.findall(r"(?:^|[\s/$])streamload ([a-z]+)([^\n&|;]*)", block.code, re.M)
    return shown


def test_every_command_and_flag_the_readme_shows_exists() -> None:
    """Each `streamload CMD ...` the README shows (inline or in a shell block) is a subcommand,
    and every --flag shown with it is one of that subcommand's flags."""
    commands = _subparsers()
    shown = _shown_commands()
    assert {c for c, _ in shown} >= {
        "info",
        "verify",
        "config",
        "demo",
        "cache",
        "convert",
        "bench",
    }
    for command, rest in shown:
        assert command in commands, command
        flags = {s for a in commands[command]._actions for s in a.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
            assert flag in flags, (command, flag)
    cache_actions = next(a for a in commands["cache"]._actions if a.dest == "action")
    assert tuple(cache_actions.choices or ()) == ("ls", "du", "clear")  # `cache ls|du|clear`


def test_every_lone_flag_the_readme_names_is_a_flag_of_some_command() -> None:
    """An inline `--flag` (or `--flag VALUE`) belongs to at least one subcommand, or to a
    script the README names (`benchmarks/fuzz.py ... --seconds`)."""
    every = {s for p in _subparsers().values() for a in p._actions for s in a.option_strings}
    for script in set(re.findall(r"`((?:benchmarks|scripts)/\w+\.py)`", README)):
        every |= set(re.findall(r"[\"'](--[a-z][a-z-]*)[\"']", (REPO / script).read_text()))
    lone = [span.split()[0] for span in _inline_code() if re.fullmatch(r"--[a-z-]+( \S+)?", span)]
    assert lone
    for flag in lone:
        assert flag in every, flag


# -- configuration keys ---------------------------------------------------------------------------


def _setting_parser(name: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(sl.config.Config)}
    assert name in fields, f"README names setting {name!r}, which does not exist"
    return fields[name].metadata["parse"]


def test_every_streamload_variable_named_is_read_or_warned_about() -> None:
    """A ``STREAMLOAD_*`` variable the README names is one streamload reads; one it presents
    as a typo is close enough to a real one that streamload's warning names that one."""
    known = sl.config.known_variables()
    named = set(re.findall(r"\bSTREAMLOAD_[A-Z_]*[A-Z]\b", README))
    assert "STREAMLOAD_CONFIG" in named
    for name in named:
        if name in known:
            continue
        assert re.search(rf"typo[^.]*{name}", PROSE), f"{name} is no variable streamload reads"
        assert difflib.get_close_matches(name, known, n=1, cutoff=0.6), name


def test_every_config_key_and_value_shown_is_a_setting_that_takes_it() -> None:
    """Each ```toml block and each inline `key = value` naming a setting is valid: the key is a
    setting and its parser accepts the value shown."""
    shown: list[tuple[str, object]] = []
    for block in _blocks("toml"):
        shown += list(tomllib.loads(block.code).items())
    for span in _inline_code():
        match = re.fullmatch(r"([a-z_]+) = (.+)", span)
        if match:  # a TOML value, or a bare word as `streamload config` prints it
            key, value = match.groups()
            try:
                shown.append((key, tomllib.loads(f"v = {value}")["v"]))
            except tomllib.TOMLDecodeError:
                shown.append((key, value))
    assert len(shown) >= 3
    for key, value in shown:
        _setting_parser(key)(value)


# -- tables and lists ---------------------------------------------------------------------------------


def _table_after(heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule dropped) of the first table after ``heading``."""
    start = README.index(heading)
    lines = README[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("|"))
    rows = []
    for line in lines[first + 2 :]:
        if not line.lstrip().startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_config_table_lists_every_setting_with_its_real_default() -> None:
    """The Configuration table has one row per setting, in declaration order, and each default
    cell parses to the default `config.load()` gives with nothing configured."""
    rows = _table_after("## Configuration")
    keys = [row[0].strip("`") for row in rows]
    assert keys == list(sl.config.setting_names())
    fields = {f.name: f for f in dataclasses.fields(sl.config.Config)}
    for key, default, _meaning in rows:
        name = key.strip("`")
        parse = fields[name].metadata["parse"]
        raw = fields[name].metadata["default"]
        if name == "cache_dir":
            assert "$XDG_CACHE_HOME/streamload" in default and "~/.cache/streamload" in default
            continue
        assert parse(default.strip("`")) == parse(raw), (name, default, raw)


def test_error_hierarchy_is_the_one_the_readme_names() -> None:
    """`ConfigError(ValueError)`, ...: each class exists, is a StreamloadError and that builtin."""
    named = re.findall(r"`(\w+Error)\((\w+)\)`", README)
    assert len(named) == 6
    for cls, builtin in named:
        error = getattr(sl, cls)
        assert issubclass(error, sl.StreamloadError) and issubclass(
            error, getattr(builtins, builtin)
        )


def test_stats_keys_in_the_readme_are_the_keys_stats_returns(tmp_path: Path) -> None:
    """Every key the loader.stats() table names (first column: top level; second: inside it)
    is a key of a real snapshot taken with a worker."""
    with sl.ShardWriter(str(tmp_path / "ds")) as w:
        for i in range(20):
            w.write({"id": i})
    dataset = sl.StreamingDataset(str(tmp_path / "ds"))
    loader = sl.StreamLoader(dataset, batch_size=5, num_workers=1, multiprocessing_context="fork")
    list(loader)
    stats = loader.stats()
    every_key = _nested_keys(stats)
    for key_cell, meaning in _table_after("Times are seconds, sizes bytes"):
        for key in re.findall(r"`(\w+)`", key_cell):
            assert key in stats, key
        for word in re.findall(r"`(\w+)`", meaning):
            assert word in every_key or word in ("get_batch", "__getitem__"), (key_cell, word)


def _nested_keys(value: Any) -> set[str]:
    keys: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            keys.add(k)
            keys |= _nested_keys(v)
    elif isinstance(value, list):
        for item in value:
            keys |= _nested_keys(item)
    return keys


def test_layout_names_packages_and_modules_that_exist() -> None:
    """Every module the Layout block lists is in the tree, and every module of every package
    (but the shards/ format subpackages, listed by name) is listed."""
    block = README[README.index("## Layout") :].split("```")[1]
    entries: dict[str, str] = {}  # package -> its description, wrapped lines joined
    package = ""
    for line in block.splitlines():
        match = re.match(r"\s*(\w+)/\s+(.*)", line)
        if match:
            package = match.group(1)
            entries[package] = match.group(2)
        elif package and re.match(r"^\s{26}\S", line):  # a wrapped line of the same package
            entries[package] += " " + line.strip()
        else:
            package = ""
    listed: set[str] = set()
    for package, text in entries.items():
        while re.search(r"\([^()]*\)", text):  # drop (explanations), nested or wrapped
            text = re.sub(r"\([^()]*\)", "", text)
        text = re.sub(r"\w+/\{[^}]*\}", "", text)  # shards/: arrow/{reader,writer}
        listed |= {f"{package}/{n.strip()}" for n in text.split(",") if n.strip().isidentifier()}
    top = set()
    for line in block.splitlines():  # top-level modules: "  errors sizes telemetry   ground..."
        match = re.match(r"\s+([a-z_]+(?: [a-z_]+)*)(?:\.py)?\s{2,}", line)
        if match and "/" not in line.split()[0]:
            top |= set(match.group(1).split())
    modules = {p.stem for p in (REPO / "streamload").glob("*.py") if p.stem != "__init__"}
    assert top == modules, ("README Layout top-level modules", top ^ modules)
    packages = [p.name for p in (REPO / "streamload").iterdir() if (p / "__init__.py").exists()]
    for entry in sorted(listed):
        name, module = entry.split("/")
        if name in packages:
            assert (REPO / "streamload" / name / f"{module}.py").exists(), entry
    for name in packages:
        if name == "shards":
            continue
        for path in (REPO / "streamload" / name).glob("*.py"):
            if path.stem != "__init__":
                assert f"{name}/{path.stem}" in listed, f"README Layout misses {name}/{path.stem}"


# -- figures --------------------------------------------------------------------------------------------


def _results(section: str) -> dict[str, dict[str, str]]:
    """Rows of the first RESULTS.md table under ``## <section>``, by their first cell (cells
    split on " | ", so a header such as ``|Spearman|`` stays one cell)."""
    lines = RESULTS[RESULTS.index(f"## {section}") :].splitlines()[1:]
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip()[1:-1].split(" | ")])
    header, rows = table[0], table[2:]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


LOADER_ROWS = {"64 KiB blobs": "W1", "int32[2048] tokens": "W2", "~100-byte text": "W3"}


def test_loader_figures_are_the_recorded_benchmark_rows() -> None:
    """The 2-worker table quotes benchmarks/RESULTS.md's loader rows exactly."""
    results = _results("Loader: StreamLoader vs DataLoader")
    rows = _table_after("With two worker processes")
    assert [row[0] for row in rows] == list(LOADER_ROWS)
    for label, ours, theirs, ratio, pss in rows:
        mine = results[f"{LOADER_ROWS[label]} StreamLoader w2"]
        dl = results[f"{LOADER_ROWS[label]} DL(hand) w2"]
        assert (ours, theirs) == (mine["items/s"], dl["items/s"])
        assert ratio == mine["x DL(hand)"] + "\u00d7"  # a multiplication sign
        assert pss == f"{mine['anon+shmem MiB']} / {dl['anon+shmem MiB']}"


SHUFFLE_ROWS = {
    "none": "shuffle none",
    "`block`, 4 shards": "shuffle block 4",
    "`block`, 16 shards": "shuffle block 16",
    "`block`, 64 shards": "shuffle block 64",
    "`full`": "shuffle full",
}


def test_shuffle_table_is_the_recorded_benchmark() -> None:
    """The shuffle trade-off table quotes RESULTS.md's shuffle rows exactly."""
    results = _results("Shuffle: full permutation vs shard-block shuffle")
    rows = _table_after("`benchmarks/shuffle.py` measures the trade-off")
    assert [row[0] for row in rows] == list(SHUFFLE_ROWS)
    for label, live, cache, neighbours, rate in rows:
        row = results[SHUFFLE_ROWS[label]]
        assert live.split()[0] == row["live shards"]
        assert cache.split()[0] == row["cache MiB"]
        assert neighbours == row["neighbours"]
        assert rate == row["items/s"]


def test_format_and_stats_figures_are_the_recorded_benchmarks() -> None:
    """LMDB vs Arrow ratios and the stats overhead range quoted in prose are RESULTS.md's."""
    formats = _results("Formats: Arrow vs LMDB shards")
    single = sorted(formats[f"get {k} lmdb"]["x arrow"] for k in ("seq", "rand"))
    batch = sorted(formats[f"batch {k} lmdb"]["x arrow"] for k in ("seq", "rand"))
    dash = "\u2013"  # an en dash, as in the README's ranges
    assert f"{single[0]}{dash}{single[1]}x as fast as Arrow" in PROSE
    assert f"at {batch[0]}{dash}{batch[1]}x Arrow's rate" in PROSE
    shuffle = _results("Shuffle: full permutation vs shard-block shuffle")
    blocks = sorted(r["|Spearman|"] for k, r in shuffle.items() if k.startswith("shuffle block"))
    full = shuffle["shuffle full"]["|Spearman|"]
    assert f"(|Spearman| {full} full, {blocks[0]}{dash}{blocks[-1]} block" in PROSE
    stats = _results("Stats overhead: StreamLoader stats on vs off")
    ratios = sorted(float(r["x off"]) for r in stats.values() if r["stats"] == "on")
    assert f"between {ratios[0]:.3f} and {ratios[-1]:.3f} times the throughput" in PROSE


def test_ray_commit_and_token_padding_figures_are_the_recorded_benchmarks() -> None:
    """The commit time the README quotes is RESULTS.md's, and the padding it calls 'well under
    1%' is what every recorded packed-rows run measured."""
    commit = _results("Convert: single process vs Ray Data")["commit"]
    assert commit["shards"] == "10000"
    assert f"one commit of 10,000 staged shards' metadata took {float(commit['s']):.2f} s" in PROSE
    tokens = _results("Token streams: blocks and packed rows vs litdata TokensLoader")
    padding = [float(r["padding"].rstrip("%")) for r in tokens.values() if r["padding"]]
    assert padding and max(padding) < 1.0


# -- prose claims -----------------------------------------------------------------------------------------

# A phrase of the README (whitespace-normalised) -> the test that checks what it says.
CLAIMS = {
    "the same exceptions (a worker's `KeyError` is still caught by `except KeyError:`)": "tests/integration/test_dataloader_fidelity.py::test_except_clauses_of_a_dataloader_loop_catch_the_worker_exception",
    "the same warnings": "tests/integration/test_dataloader_fidelity.py::test_workers_each_yielding_the_whole_iterable_warn_exactly_as_dataloader",
    "the same `in_order` semantics": "tests/integration/test_dataloader_fidelity.py::test_in_order_false_delivers_ready_batches_first_like_dataloader",
    "one vectorised gather per column, no per-sample Python objects for numeric columns": "tests/unit/loader/test_loader.py::test_columnar_path_builds_no_per_sample_dicts",
    "a corrupt or truncated shard raises `FormatError` naming it (never a segfault)": "tests/unit/dataset/test_corruption.py::test_truncated_shard_names_shard_and_sizes",
    "so an interrupted write leaves a dataset that is visibly incomplete": "tests/unit/dataset/test_corruption.py::test_interrupted_writer_leaves_an_incomplete_dataset",
    "shard names that could escape the dataset root are refused": "tests/unit/dataset/test_corruption.py::test_hostile_shard_names_are_refused_before_any_file_is_opened",
    "reuse the previous epoch's rings": "tests/unit/transport/test_ring_reopen.py::test_non_persistent_passes_reuse_their_rings",
    "never re-hash a shard file another process already verified": "tests/unit/format/test_verified.py::test_a_verified_shard_is_not_rehashed_by_a_fresh_process",
    "Worker processes start with `fork` while the trainer runs no other Python thread": "tests/unit/loader/test_pool.py::test_auto_start_method_forks_only_while_the_trainer_is_single_threaded",
    "`auto` follows that global choice (as DataLoader does)": "tests/integration/test_dataloader_fidelity.py::test_global_start_method_is_respected_like_dataloader",
    "`fork`, `spawn` or `forkserver` win over a global `multiprocessing.set_start_method(...)`": "tests/integration/test_dataloader_fidelity.py::test_explicit_start_method_setting_wins_over_the_global_one",
    "An exception raised in a loader worker reaches your loop as its own type": "tests/integration/test_dataloader_fidelity.py::test_worker_exception_is_caught_as_dataloader_raises_it",
    "a type that cannot be rebuilt from one message (DataLoader: a `RuntimeError`) arrives as a plain `WorkerError`": "tests/unit/loader/test_worker_errors.py::test_rebuilt_exception_is_what_dataloader_raises_and_a_worker_error",
    "`DataLoader worker (pid(s) ...) exited unexpectedly`": "tests/integration/test_worker_failures.py::test_sigkilled_worker_raises_naming_pid_and_signal",
    "`DataLoader timed out after N seconds`": "tests/integration/test_worker_failures.py::test_stopped_worker_with_timeout_raises_timed_out",
    "so are refused constructor arguments and the too-many-workers warning": "tests/unit/loader/test_loader.py::test_too_many_workers_warns_with_dataloaders_words_at_construction_and_iter",
    "`streamload info` also shows index.json's metadata": "tests/unit/cli/test_cli_surface.py::test_info_shows_index_metadata_such_as_class_names",
    "`streamload cache ... --cache-dir DIR` works on another cache than the configured one": "tests/unit/cli/test_cli_surface.py::test_cache_ls_is_sorted_by_dataset_then_shard_and_takes_cache_dir",
    "errors name the command's flags (`--overwrite`)": "tests/unit/cli/test_cli_surface.py::test_convert_errors_name_the_flags_not_the_keyword_arguments",
    "output piped into `head` ends quietly": "tests/unit/cli/test_cli_surface.py::test_config_json_into_a_closed_pipe_ends_quietly",
    "Precedence, lowest to highest: built-in defaults < config file": "tests/unit/test_config.py::test_precedence_is_default_file_env_argument",
    "A bad value fails with `ConfigError` naming the key, the value and where it came from, whatever the dataset's URL": "tests/unit/dataset/test_settings.py::test_every_setting_from_the_environment_is_parsed_at_construction",
    'a local dataset refuses `cache_limit="10 gigs"` too': "tests/unit/dataset/test_settings.py::test_every_bad_argument_is_refused_at_construction_whatever_the_url",
    "unknown keys in a config file are refused": "tests/unit/test_config.py::test_unknown_file_key_names_key_and_file",
    "is warned about once, naming the closest known one": "tests/unit/test_config.py::test_a_misspelled_variable_warns_once_naming_the_closest_setting",
    "(`auto` where it is automatic)": "tests/unit/cli/test_cli_surface.py::test_config_shows_auto_where_the_value_is_auto",
    "`ShardWriter`'s default compression of Arrow shards": "tests/unit/write/test_writer.py::test_default_compression_comes_from_config_for_arrow_only",
    "403/404 fail at once": "tests/remote/test_retry.py::test_forbidden_and_not_found_fail_at_once",
    "so a read makes at most `retries + 1` requests": "tests/remote/test_retry.py::test_attempts_are_bounded_and_not_multiplied",
    "A bucket that does not exist is a `StoreError` saying so": "tests/remote/test_missing_bucket.py::test_reading_from_a_missing_bucket_names_the_bucket",
    "so you need not set `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`": "tests/remote/test_gcs_emulator.py::test_gcs_emulator_reads_without_the_grpc_bucket_probe",
    "re-fetched only when the object's ETag/generation changes": "tests/remote/test_index_cache.py::test_index_is_downloaded_once_per_node_and_refetched_when_rewritten",
    "each shard is downloaded once per node (one process downloads, the others wait for it)": "tests/unit/dataset/test_remote.py::test_loader_workers_share_one_cache_one_download_per_shard",
    "checked against its xxh3 from `index.json` before it becomes visible": "tests/unit/cache/test_disk.py::test_nothing_is_published_until_the_download_is_complete_and_verified",
    "local datasets are read in place and never copied": "tests/unit/dataset/test_remote.py::test_a_local_dataset_is_read_in_place_never_copied",
    "Shards a process is reading or has read ahead are never evicted": "tests/unit/cache/test_disk.py::test_pinned_shards_are_never_evicted",
    "otherwise the shard needed furthest in the future goes first": "tests/unit/cache/test_eviction.py::test_eviction_order_is_unknown_lru_then_furthest_next_use_then_worth_waiting",
    "across the epoch boundary too": "tests/unit/dataset/test_remote.py::test_readahead_runs_across_the_epoch_boundary",
    "(at most the dataset's shards, largest first)": "tests/unit/dataset/test_remote.py::test_working_set_counts_only_shards_that_exist",
    "by `StreamLoader` for the workers it will start, before starting them": "tests/unit/dataset/test_remote.py::test_cache_too_small_for_the_workers_is_refused_by_the_loader_before_they_start",
    "or deletes every shard no running process is reading": "tests/unit/cli/test_cache_command.py::test_cache_clear_deletes_unpinned_shards_only_and_nothing_it_did_not_make",
    "`StreamingDataset`, `get_batch` and `StreamLoader` return exactly what they return for Arrow shards": "tests/integration/test_formats.py::test_arrow_and_lmdb_stream_identical_batches",
    "is a `FormatError` naming it, never a SIGBUS": "tests/unit/shards/lmdb/test_reader.py::test_truncated_shard_is_a_format_error_not_a_sigbus",
    "take up to ~2x Arrow's bytes": "tests/integration/test_formats.py::test_lmdb_overhead_follows_4kib_pages_up_to_twice_arrows_bytes",
    'yields `{"key": bytes, "value": bytes}` per entry in key order': "tests/unit/shards/lmdb/test_env.py::test_environment_directory_yields_entries_in_key_order",
    "(a remote environment is fetched once per node into the shard cache and mapped from there)": "tests/remote/test_lmdb_env_remote.py::test_remote_lmdb_environment_is_fetched_once_through_the_cache",
    'class names in `index.json` under `"metadata": {"classes": [...]}`': "tests/unit/write/test_convert.py::test_image_folder_converts_to_bytes_labels_and_class_names",
    "nulls and other types are a `FormatError` naming the column": "tests/unit/write/test_convert.py::test_unsupported_types_and_nulls_name_the_column",
    "reading one bounded batch at a time": "tests/unit/write/test_convert_memory.py::test_peak_memory_does_not_grow_with_the_source",
    "running it again replaces the partial output": "tests/unit/write/test_convert.py::test_interrupted_conversion_leaves_no_index_and_a_rerun_finishes",
    "a test keeps the import graph free of circles": "tests/unit/test_layers.py::test_import_graph_has_no_circle",
    "**One global order per epoch**, the same on any number of GPUs or workers": "tests/unit/plan/test_partition.py::test_steps_consume_the_global_order_exactly_once_on_any_world_size",
    "**every rank gets the same number of batches**": "tests/unit/plan/test_partition.py::test_every_rank_takes_the_same_number_of_nonempty_steps",
    "A dataset with fewer shards than ranks x workers is fine": "tests/integration/test_resume.py::test_fewer_shards_than_ranks_times_workers_split_within_shards",
    "**Workers** build whole batches; the batches do not depend on `num_workers`": "tests/unit/loader/test_loader.py::test_num_workers_above_zero_iterates_like_num_workers_zero",
    "it can be restored on **another world size, worker count or batch size**": "tests/integration/test_resume.py::test_elastic_resume_from_four_ranks_to_two_loses_and_repeats_nothing",
    "After an epoch's last batch it names the next epoch": "tests/integration/test_resume.py::test_state_after_the_last_batch_starts_the_next_epoch",
    "refuses a state from another dataset, other shuffle settings or an unknown version with `StateError` showing both sides": "tests/integration/test_resume.py::test_state_from_another_seed_or_dataset_raises_state_error",
    "raise `StateError` from `state_dict()`: samplers carry no resumable state": "tests/integration/test_resume.py::test_loaders_without_a_plan_refuse_state_dict",
    "so `state_dict()` raises `StateError` in that mode": "tests/integration/test_dataloader_fidelity.py::test_in_order_false_over_a_streaming_dataset_plan_and_state_dict_refused",
    "continues the same epoch on 2 GPUs with no sample lost or repeated": "tests/integration/test_distributed.py::test_four_ranks_then_two_read_every_sample_once_with_equal_steps",
    "Workers report their stage clocks at most every 0.5 s": "tests/unit/loader/test_stats.py::test_persistent_workers_report_every_epoch",
    'With `log_level = "INFO"` each epoch ends with one line such as': "tests/unit/loader/test_stats.py::test_epoch_summary_is_logged_at_info",
    "renders the Prometheus text format without any dependency": "tests/unit/loader/test_exporter.py::test_prometheus_text_parses_and_matches_stats",
    "`registry.register(PrometheusCollector(loader))` exposes the same metrics for scraping": "tests/unit/loader/test_exporter.py::test_prometheus_text_parses_with_prometheus_client",
    "`gs://` needs `pip install 'streamload[gcs]'`": "tests/remote/test_store.py::test_missing_client_package_names_the_extra",
    "`http(s)://` works as is (the server must honour Range requests)": "tests/remote/test_store.py::test_a_server_that_ignores_range_is_refused",
    "exponential backoff with full jitter on throttling, 5xx, resets, truncated bodies and time-outs": "tests/remote/test_retry.py::test_each_transient_fault_is_retried_then_succeeds",
    "from and to any fsspec URL": "tests/unit/write/test_convert.py::test_converts_between_fsspec_urls",
    "so a reader has only one window of shards open at a time": "tests/unit/plan/test_order.py::test_block_order_keeps_at_most_block_shards_live",
    "Ranks** come from `StreamingDataset(rank=, world_size=)` when given, else from `torch.distributed`": "tests/unit/dataset/test_topology.py::test_topology_comes_from_arguments_then_env",
    "only when fewer samples than ranks are left do the remaining ranks repeat one": "tests/unit/plan/test_partition.py::test_tail_smaller_than_world_size_is_padded_by_repeats",
    "`len(loader)` is this rank's number of batches either way": "tests/unit/plan/test_partition.py::test_count_steps_matches_the_plan",
    "is a small JSON-able dict": "tests/unit/plan/test_state.py::test_state_round_trips_through_json",
    "describing the **last batch your loop received** (not what workers prefetched)": "tests/integration/test_resume.py::test_resume_conformance_after_every_step",
    "Checkpoint the loader next to the model with plain `torch.save`": "tests/integration/test_resume.py::test_checkpoint_with_torch_save_round_trips",
    "`set_epoch` to the epoch the state names keeps its position, any other epoch starts that epoch from the top": "tests/integration/test_resume.py::test_state_before_any_batch_and_after_set_epoch",
    "streams a dataset without a model and prints samples/s, MB/s, data-wait p50/p95": "tests/unit/cli/test_bench.py::test_bench_prints_a_row_per_loader_and_worker_count",
    "at least 0.2": "tests/unit/cli/test_bench.py::test_bench_refuses_a_sampling_interval_below_the_minimum",
    "adds an `x DL` ratio column": "tests/unit/cli/test_bench.py::test_bench_prints_a_row_per_loader_and_worker_count",
    "`demo`, `convert`, `verify` and `bench` show a progress bar on a terminal": "tests/unit/cli/test_cli_surface.py::test_verify_bench_and_demo_bars_have_totals_and_never_overshoot",
    "(`progress = never` or a pipe keeps them silent)": "tests/unit/test_progress.py::test_auto_follows_whether_stderr_is_a_terminal",
    # Language-model training: token streams
    "a 1-d array column whose length changes is inferred as variable": "tests/unit/write/test_writer.py::test_inferred_1d_array_becomes_variable_when_its_length_changes",
    '`shapes={"tokens": [None]}` declares it up front': "tests/unit/write/test_writer.py::test_shapes_declares_variable_dims_without_a_schema",
    "(None drops the row) chunk by chunk, in bounded memory": "tests/unit/write/test_convert.py::test_transform_sees_bounded_chunks",
    "so a reader lays out the token stream without opening a shard": "tests/remote/test_token_remote.py::test_blocks_stream_from_s3_through_the_cache_opening_no_shard_up_front",
    "the concatenated stream of every document cut into `N // block_size` blocks": "tests/unit/dataset/test_tokens.py::test_blocks_equal_slices_of_the_concatenated_corpus",
    "blocks span documents and shards": "tests/unit/dataset/test_tokens.py::test_blocks_span_shards_and_documents",
    "the last `N % block_size` tokens are left out": "tests/unit/dataset/test_tokens.py::test_every_token_once_per_epoch_except_the_tail",
    "a document that fits is never split, a longer one is cut into `seq_len` pieces": "tests/unit/dataset/test_packing.py::test_a_document_that_fits_is_never_split",
    "`segment_ids` (1, 2, ... per document in the row, 0 = padding) and `positions` (restarting at 0 per document)": "tests/unit/dataset/test_tokens.py::test_packed_rows_keep_fitting_documents_whole_and_mask_padding",
    '`loader.stats()["packing"]["padding_fraction"]` reports the padding received': "tests/unit/dataset/test_tokens.py::test_padding_fraction_is_reported_by_the_loader",
    "(typically well under 1%: best-fit fills rows tightly)": "tests/integration/test_readme.py::test_ray_commit_and_token_padding_figures_are_the_recorded_benchmarks",
    "Blocks and packed rows are the items the plan shuffles, splits across ranks and resumes": "tests/integration/test_token_resume.py::test_elastic_resume_from_4_ranks_on_2_loses_and_repeats_nothing",
    "Tokens keep their stored dtype": "tests/unit/dataset/test_tokens.py::test_blocks_equal_slices_of_the_concatenated_corpus",
    # Converting at cluster scale with Ray Data, the commit, and appending
    "Ray tasks read parts of the files (runs of row groups) and write shards in parallel": "tests/unit/test_ray.py::test_ray_conversion_equals_single_process_conversion",
    "so the same input gives the same dataset": "tests/unit/test_ray.py::test_ray_conversion_equals_single_process_conversion",
    "(one schema, unique names,": "tests/unit/write/test_commit.py::test_commit_refuses_mixed_schemas_and_duplicate_places",
    "each staged file present with its recorded size)": "tests/unit/write/test_commit.py::test_commit_refuses_missing_or_resized_staged_shards",
    "A task that Ray retries (a worker crash)": "tests/unit/test_ray.py::test_a_retried_task_attempt_leaves_no_duplicate_and_no_orphan",
    "or a speculative duplicate never adds a sample twice": "tests/unit/test_ray.py::test_two_results_for_one_task_commit_only_the_first",
    "the others' staged files are deleted by the commit": "tests/unit/write/test_commit.py::test_commit_deletes_unreferenced_staged_files_only",
    "A failed job writes no `index.json`": "tests/unit/test_ray.py::test_a_failed_job_leaves_no_index_and_a_rerun_commits_cleanly",
    "Shards are ordered by (task index, position in the task)": "tests/unit/write/test_commit.py::test_commit_orders_shards_by_task_and_position",
    "One writer per dataset at a time": "tests/unit/write/test_commit.py::test_a_concurrent_commit_makes_an_append_fail_without_committing",
    "took 1.08 s": "tests/integration/test_readme.py::test_ray_commit_and_token_padding_figures_are_the_recorded_benchmarks",
    "(same format and schema, else a `FormatError` naming the difference)": "tests/unit/write/test_commit.py::test_append_with_another_schema_names_the_column",
    "commits `index.json` version N+1 after keeping version N as `index.vN.json`": "tests/unit/write/test_commit.py::test_append_adds_a_version_and_readers_of_the_old_one_keep_reading",
    "so a reader that opened the old index keeps reading it": "tests/unit/write/test_commit.py::test_append_adds_a_version_and_readers_of_the_old_one_keep_reading",
    "`streamload.format.index.load_index(url, version=N)` reads an earlier version": "tests/unit/test_ray.py::test_append_through_ray_adds_a_version_and_keeps_the_old_one",
    "A loader state saved before an append is refused with `StateError`": "tests/unit/write/test_commit.py::test_a_loader_state_from_before_an_append_is_refused_unless_allowed",
    "unshuffled that is still exactly once (appended samples come last)": "tests/unit/write/test_commit.py::test_a_loader_state_from_before_an_append_is_refused_unless_allowed",
    "from the next epoch on every sample, old and new, is seen exactly once": "tests/unit/write/test_commit.py::test_a_shuffled_state_continues_after_an_append_and_the_next_epoch_is_whole",
    "`import streamload` never imports it": "tests/unit/test_layers.py::test_importing_streamload_never_imports_ray",
    # Worker processes, memory, and what the loop receives
    "`ring_size` (default `auto` = 4 MiB per worker) never needs to grow with the batch": "tests/integration/test_worker_failures.py::test_copying_pass_streams_batches_far_larger_than_the_ring",
    "keeps its workers for its next pass": "tests/unit/loader/test_pool.py::test_columnar_passes_reuse_their_workers_without_persistent_workers",
    "Every other route starts fresh workers each pass, as DataLoader does": "tests/unit/loader/test_pool.py::test_passes_with_user_code_in_workers_start_fresh_workers",
    "hands each str/bytes column of the columnar route to the loop as one `sl.Blobs`": "tests/unit/format/test_blobs.py::test_loader_hands_out_contiguous_blobs_on_request",
    "(a no-op if you set malloc options yourself)": "tests/unit/loader/test_heap.py::test_priming_leaves_a_users_malloc_settings_alone",
    "hands kept memory back when a pass's workers stop": "tests/unit/loader/test_heap.py::test_release_hands_kept_memory_back",
    '`loader.stats()["heap"]` reports it': "tests/unit/loader/test_heap.py::test_loader_stats_report_what_was_done_to_the_trainer_heap",
    # Reliability: what is guaranteed, and what is not
    "a FIFO, device or directory is refused without reading": "tests/unit/format/test_index.py::test_index_that_is_not_a_regular_file_is_refused_without_reading_it",
    "nesting too deep": "tests/unit/format/test_index.py::test_deeply_nested_json_is_a_format_error_not_a_recursion_error",
    "In the cache: a `CacheError` naming the directory, and no partial copy is ever kept": "tests/unit/cache/test_disk.py::test_enospc_is_a_cache_error_with_no_partial_file_and_the_next_run_works",
}


@pytest.mark.parametrize("phrase", sorted(CLAIMS))
def test_each_claim_is_in_the_readme_and_its_test_exists(phrase: str) -> None:
    """The claim is still worded so in the README, and the test that checks it still exists."""
    assert " ".join(phrase.split()) in PROSE, phrase
    path, name = CLAIMS[phrase].split("::")
    assert f"def {name}(" in (REPO / path).read_text(), CLAIMS[phrase]


def _sections() -> dict[str, str]:
    """Each ``## `` section's text (whitespace-normalised), by heading."""
    parts = re.split(r"^## (.+)$", README, flags=re.M)
    return {parts[i].strip(): " ".join(parts[i + 1].split()) for i in range(1, len(parts), 2)}


def test_every_section_has_a_claim_or_a_block_under_test() -> None:
    """A section added later cannot go unchecked: each ``## `` section holds a `CLAIMS` phrase
    or a ```python block (run here or statically checked)."""
    sections = _sections()
    assert len(sections) >= 8
    for heading, text in sections.items():
        checked = any(" ".join(p.split()) in text for p in CLAIMS) or "```python" in text
        assert checked, f"README section {heading!r} has no claim mapped to a test in CLAIMS"
