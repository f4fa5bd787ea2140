"""gs:// through an emulator works without GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false.

gcsfs's default filesystem class (``ExtendedGcsFileSystem``) asks the Storage Control API over
gRPC what kind of bucket each one is; an emulator speaks no gRPC, so every such call waited about
60 s for its retries to run out. streamload picks gcsfs's core class when the URL goes to an
emulator (``endpoint_url`` in storage_options, or ``STORAGE_EMULATOR_HOST``). The test runs in a
fresh interpreter without the variable the test session sets, so gcsfs is imported as a user's
program imports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import streamload as sl

SCRIPT = """
import sys
import gcsfs
import streamload as sl
from streamload.store import filesystem as store

url, endpoint = sys.argv[1], sys.argv[2]
options = {"endpoint_url": endpoint, "token": "anon"}
assert gcsfs.GCSFileSystem.__name__ == "ExtendedGcsFileSystem", gcsfs.GCSFileSystem
fs, _ = store.resolve(url, options)
print(type(fs).__name__)
ds = sl.StreamingDataset(url, storage_options=options)
loader = sl.StreamLoader(ds, batch_size=8)
print(sorted(i for batch in loader for i in batch["id"].tolist()) == list(range(40)))
"""


def test_gcs_emulator_reads_without_the_grpc_bucket_probe(gcs_url: Any, tmp_path: Path) -> None:
    """A dataset on fake-gcs-server reads end to end in a process where gcsfs's experimental
    class is the default, through gcsfs's core class (no gRPC probe to time out)."""
    with sl.ShardWriter(gcs_url.url, storage_options=gcs_url.storage_options) as w:
        for i in range(40):
            w.write({"id": i})
    env = {k: v for k, v in os.environ.items() if k != "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"}
    env["STREAMLOAD_CACHE_DIR"] = str(tmp_path / "cache")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, gcs_url.url, gcs_url.storage_options["endpoint_url"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,  # a hang guard: with the probe, the first request alone takes ~60 s
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["GCSFileSystem", "True"]
