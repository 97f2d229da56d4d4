"""A ``--direct`` fetch never trusts a central directory that lacks images the metadata lists.

A zip's directory has no checksum. One damaged in transit (a proxy that flips a bit) can turn
an image's name into a stray file's (``ISIC_1.jpg`` -> ``ISIC^1.jpg``): nothing the member
fetch reads disagrees, since that member is simply not fetched, and the directory is cached.
Every later run then trusted the cache, and the closing verify failed ("1 missing") forever,
its repair command included. Now the sha256-pinned CSVs are the reference: a directory (cached
or just read) that lacks an image they list is read again from the server, once.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from support.cli import cli_env, run_cli
from support.fixtures import served_dataset

dataset, mirror = served_dataset("directory", n_train=40, n_test=8, formats=("jpeg",))

ZIP = "ISIC_2020_Training_JPEG.zip"


def _fetch(dataset, mirror, data: Path):
    return run_cli("fetch", "--split", "train", "--format", "jpeg", "--direct", "--json",
                   "--data-dir", str(data), "--mirror", mirror.url,
                   env=cli_env(dataset.manifest_path), timeout=180)


def test_a_damaged_cached_directory_is_read_again(dataset, mirror, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _fetch(dataset, mirror, data)
    assert first.returncode == 0, first.stderr[-2000:]
    cache = data / ".isic2020" / "remote" / f"{ZIP}.json.gz"
    doc = json.loads(gzip.decompress(cache.read_bytes()))
    col = doc["columns"].index("name")
    victim = next(row for row in doc["members"] if row[col].endswith(".jpg"))
    image = victim[col].rsplit("/", 1)[-1]
    victim[col] = victim[col].replace("ISIC_", "ISIC^")  # one flipped bit: 0x5F -> 0x5E
    cache.write_bytes(gzip.compress(json.dumps(doc).encode()))
    (data / "jpeg" / "train" / image).unlink()  # so the damaged directory must be relied on
    # and one image the damaged directory still names: fetched before the directory is
    # doubted (the check waits for the CSVs, the members do not), found in place after
    other = next(row for row in doc["members"] if row[col].endswith(".jpg") and row is not victim)
    other_image = other[col].rsplit("/", 1)[-1]
    sizes = {image: victim[doc["columns"].index("file_size")],
             other_image: other[doc["columns"].index("file_size")]}
    (data / "jpeg" / "train" / other_image).unlink()

    again = _fetch(dataset, mirror, data)

    assert again.returncode == 0, again.stderr[-2000:]
    assert (data / "jpeg" / "train" / image).is_file()
    assert (data / "jpeg" / "train" / other_image).stat().st_size == sizes[other_image]
    report = json.loads(again.stdout)
    assert report["verification"]["ok"]
    (entry,) = (f for f in report["files"] if f["name"] == ZIP)
    assert entry["extraction"]["directory_cached"] is False  # read again from the server
    # both passes counted: the two images written once each, none counted as already there
    assert entry["extraction"]["written"] == 2
    assert entry["extraction"]["bytes_written"] == sum(sizes.values())
    assert entry["extraction"]["skipped"] == 40 - 2
    healed = json.loads(gzip.decompress(cache.read_bytes()))
    assert all("ISIC^" not in row[col] for row in healed["members"])
