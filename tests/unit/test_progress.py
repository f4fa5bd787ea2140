"""Tests of streamload.progress: bars follow the progress setting; the stand-in behaves alike."""

from __future__ import annotations

import pytest
from tqdm import tqdm

from streamload.progress import NullProgress, bars_enabled, progress


def test_never_gives_a_silent_bar_that_still_iterates(capsys: pytest.CaptureFixture[str]) -> None:
    """progress=never yields the items, counts them and prints nothing."""
    bar = progress(range(5), desc="x", mode="never")
    assert isinstance(bar, NullProgress)
    assert list(bar) == [0, 1, 2, 3, 4]
    bar.update(3)
    bar.set_postfix(a=1)
    bar.close()
    assert bar.n == 8
    assert capsys.readouterr() == ("", "")


def test_always_gives_a_tqdm_bar_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """progress=always shows a tqdm bar on stderr even without a terminal, never on stdout."""
    with progress(total=4, desc="work", mode="always") as bar:
        assert isinstance(bar, tqdm)
        bar.update(4)
    out, err = capsys.readouterr()
    assert out == ""
    assert "work" in err


def test_auto_follows_whether_stderr_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto enables bars exactly when stderr is a TTY."""

    class FakeStream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr("sys.stderr", FakeStream(True))
    assert bars_enabled("auto") is True
    monkeypatch.setattr("sys.stderr", FakeStream(False))
    assert bars_enabled("auto") is False


def test_explicit_enabled_overrides_the_setting() -> None:
    """enabled=False silences bars even when the setting says always."""
    assert isinstance(progress(range(2), mode="always", enabled=False), NullProgress)
