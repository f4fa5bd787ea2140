"""A URL in a bucket that does not exist says so (a StoreError naming the bucket), whether it
is read (load_index, StreamingDataset, ``streamload info``) or written (ShardWriter, convert, the
Ray sink: all through ``commit.prepare``)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

import streamload as sl
from streamload.cli.main import main
from streamload.format.index import load_index
from streamload.store import filesystem as store
from streamload.write import commit

BOTH = pytest.mark.parametrize("which", ["s3", "gcs"])


def _missing(request: Any, which: str) -> tuple[str, dict[str, Any]]:
    remote = request.getfixturevalue(f"{which}_url")
    scheme, rest = remote.url.split("://", 1)
    return f"{scheme}://nosuchbucket-{rest.split('/')[0]}/x", remote.storage_options


@BOTH
def test_reading_from_a_missing_bucket_names_the_bucket(which: str, request: Any) -> None:
    """Not "the dataset is missing or incomplete": the bucket itself is missing."""
    url, options = _missing(request, which)
    bucket = url.rsplit("/", 1)[0]
    with pytest.raises(sl.StoreError, match=f"the bucket {bucket} does not exist") as info:
        load_index(url, options)
    assert info.value.errno == errno.ENOENT and "[Errno" not in str(info.value)
    with pytest.raises(sl.StoreError, match="does not exist"):
        sl.StreamingDataset(url, storage_options=options)


def test_info_on_a_missing_bucket_says_so(
    request: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`streamload info s3://nosuchbucket/x`: exit 2, one line naming the missing bucket (the
    CLI reaches the emulator through AWS_ENDPOINT_URL_S3, as a user's shell would)."""
    url, options = _missing(request, "s3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", options["endpoint_url"])
    assert main(["info", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamload: error: ") and err.count("\n") == 1
    assert f"the bucket {url.rsplit('/', 1)[0]} does not exist" in err


@BOTH
def test_a_missing_dataset_in_an_existing_bucket_is_still_a_missing_dataset(
    which: str, request: Any
) -> None:
    """Only a missing bucket gets the bucket message."""
    remote = request.getfixturevalue(f"{which}_url")
    with pytest.raises(sl.FormatError, match="missing or incomplete"):
        load_index(remote.url + "/nothing-here", remote.storage_options)


@BOTH
def test_writing_to_a_missing_bucket_names_the_bucket(
    which: str, request: Any, tmp_path: Path
) -> None:
    """convert (and ShardWriter) refuse before writing any shard, without "[Errno 2]"."""
    url, options = _missing(request, which)
    src = tmp_path / "src"
    with sl.ShardWriter(str(src)) as w:
        w.write({"i": 1})
    with pytest.raises(sl.StoreError) as info:
        sl.convert(str(src), url, dst_storage_options=options)
    assert f"the bucket {url.rsplit('/', 1)[0]} does not exist" in str(info.value)
    assert "[Errno" not in str(info.value)


@BOTH
def test_every_writer_is_refused_by_the_shared_prepare_step(which: str, request: Any) -> None:
    """commit.prepare, which ShardWriter and the Ray sink's job start both call, names the
    missing bucket for create and append alike (s3fs would otherwise create it)."""
    url, options = _missing(request, which)
    fs, root = store.resolve(url, options)
    for mode in ("create", "append"):
        with pytest.raises(sl.StoreError, match=r"the bucket .* does not exist"):
            commit.prepare(fs, root, url, mode, False)
    assert not fs.exists(root.split("/", 1)[0])
