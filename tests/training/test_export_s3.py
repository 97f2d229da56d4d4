"""export --layout webdataset|parquet s3://bucket/prefix: the bytes of a local export, uploaded
one finished shard at a time, resumable after a kill, refusing what a local DEST refuses.

Against moto's S3 server (started by the tests) behind :class:`support.s3hold.HoldingGate`,
which checks credentials as S3 does, counts the writes per key and can hold one key's upload
so a kill lands while the export is busy. Shards are read back with the ``webdataset`` library
and pyarrow from files downloaded from moto."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.jpegs import write_jpegs
from support.metadata import make_synthetic
from support.s3hold import HoldingGate

pytestmark = pytest.mark.s3

INDEX = "isic2020-index.json"
PREFIX = "lab/shards"
_n = iter(range(10**6))


def _bucket(s3_server) -> str:
    name = f"shards-{os.getpid()}-{next(_n)}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    syn = make_synthetic(root)
    images = write_jpegs(root, {"train": list(syn.train["image_name"]),
                                "test": list(syn.test["image_name"])})
    r = run_cli("folds", "--data-dir", str(root), "--json")
    assert r.returncode == 0, r.stderr
    return root, syn, images


@pytest.fixture
def gate(s3_server):
    with HoldingGate(s3_server.endpoint) as g:
        yield g


def _env(gate: HoldingGate | None, **extra: str) -> dict[str, str]:
    env = cli_env()
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    if gate is not None:
        env["AWS_ENDPOINT_URL"] = gate.endpoint
    env.update(extra)
    return env


def _args(layout: str, data: Path, dest: str, *extra: str) -> list[str]:
    return ["export", "--layout", layout, "--data-dir", str(data), dest, "--json", "--quiet",
            *extra]


def _elsewhere(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a CLI run in another working directory: PYTHONPATH made absolute, so the
    code under test is still the one imported."""
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return env


def _export(layout: str, data: Path, dest: str, *extra: str, env=None):
    """The CLI export, run in the data directory's parent (code that took ``s3://`` for a
    folder name would write there, never into the checkout)."""
    return run_cli(*_args(layout, data, dest, *extra),
                   env=_elsewhere(env if env is not None else cli_env()), cwd=data.parent)


def _objects(s3_server, bucket: str, prefix: str = PREFIX) -> dict[str, bytes]:
    """Every object under ``prefix`` (name below it -> bytes), downloaded from moto."""
    c = s3_server.client
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix) + 1:]] = c.get_object(Bucket=bucket,
                                                           Key=o["Key"])["Body"].read()
    return out


def _local(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dest.iterdir())}


def _download(objects: dict[str, bytes], folder: Path) -> Path:
    folder.mkdir()
    for name, blob in objects.items():
        (folder / name).write_bytes(blob)
    return folder


def test_webdataset_to_s3_is_byte_identical_to_a_local_export_and_reads_back(
    data, s3_server, gate, tmp_path
):
    """Every object (shards and index) has the bytes of the same export to a folder; the shards
    downloaded from moto read back with ``webdataset``; a re-run uploads no shard again."""
    wds = pytest.importorskip("webdataset")
    root, syn, images = data
    local = tmp_path / "local"
    assert _export("webdataset", root, str(local), "--shard-size", "50KB").returncode == 0
    bucket = _bucket(s3_server)
    url = f"s3://{bucket}/{PREFIX}"
    r = _export("webdataset", root, url, "--shard-size", "50KB", env=_env(gate))
    assert r.returncode == 0, r.stderr
    assert r.json["dest"] == url and r.json["index"] == f"{url}/{INDEX}"
    objects = _objects(s3_server, bucket)
    assert objects == _local(local)
    train = sorted(n for n in objects if n.startswith("isic2020-train-"))
    assert len(train) > 3
    got = _download(objects, tmp_path / "got")
    ds = wds.WebDataset([str(got / n) for n in train], shardshuffle=False).decode()
    seen = {s["__key__"]: s for s in ds}
    assert sorted(seen) == sorted(syn.train["image_name"])
    assert all(seen[k]["jpg"] == images[k] for k in seen)
    truth = syn.train.set_index("image_name")["target"]
    assert all(seen[k]["cls"] == int(truth[k]) for k in seen)
    gate.puts.clear()
    again = _export("webdataset", root, url, "--shard-size", "50KB", env=_env(gate))
    assert again.returncode == 0, again.stderr
    assert all(s["written"] == 0 and s["kept"] == s["shards"] for s in again.json["splits"])
    assert set(gate.puts) == {f"{PREFIX}/{INDEX}"}  # only the index is written again
    assert _objects(s3_server, bucket) == objects


def test_parquet_to_s3_is_byte_identical_and_pyarrow_reads_the_images(
    data, s3_server, gate, tmp_path
):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root, syn, images = data
    local = tmp_path / "local"
    assert _export("parquet", root, str(local), "--shard-size", "150KB").returncode == 0
    bucket = _bucket(s3_server)
    r = _export("parquet", root, f"s3://{bucket}/{PREFIX}", "--shard-size", "150KB",
                env=_env(gate))
    assert r.returncode == 0, r.stderr
    objects = _objects(s3_server, bucket)
    assert objects == _local(local)
    got = _download(objects, tmp_path / "got")
    rows = {}
    for p in sorted(got.glob("isic2020-train-*.parquet")):
        for row in pq.read_table(p).to_pylist():
            rows[row["image_name"]] = row["image"]["bytes"]
    assert rows == {k: images[k] for k in syn.train["image_name"]}


def test_a_kill_after_the_first_shard_then_a_rerun_completes_without_sending_it_again(
    data, s3_server, gate, tmp_path
):
    """The upload of shard 1 is held; once shard 0 is in the bucket and in the index the export
    is killed (SIGKILL). Nothing of shard 1 is at its key; the re-run completes, keeps shard 0
    (not one write request for it) and the bucket equals a local export; the killed run's
    local temporary folder is removed by the re-run."""
    root, _, _ = data
    local = tmp_path / "local"
    args = ("--shard-size", "50KB", "--split", "train")
    assert _export("webdataset", root, str(local), *args).returncode == 0
    bucket = _bucket(s3_server)
    url = f"s3://{bucket}/{PREFIX}"
    first, second = "isic2020-train-000000.tar", "isic2020-train-000001.tar"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    gate.hold(f"{PREFIX}/{second}")
    proc = subprocess.Popen(cli_cmd(*_args("webdataset", root, url, *args)),
                            env=_elsewhere(_env(gate, TMPDIR=str(tmp))),
                            cwd=root.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not gate.holding.is_set() and proc.poll() is None and time.monotonic() < deadline:
            gate.holding.wait(0.05)
        assert gate.holding.is_set(), proc.stderr.read() if proc.poll() is not None else ""
        objects = _objects(s3_server, bucket)
        assert first in objects and second not in objects
        index = json.loads(objects[INDEX])
        assert [e["name"] for e in index["splits"]["train"]["shards"]] == [first]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        gate.release()
    assert second not in _objects(s3_server, bucket)
    assert [p.name for p in tmp.iterdir()][0].startswith(f"isic2020-export-{proc.pid}-")
    gate.puts.clear()
    r = _export("webdataset", root, url, *args, env=_env(gate, TMPDIR=str(tmp)))
    assert r.returncode == 0, r.stderr
    assert r.json["splits"][0]["kept"] == 1
    assert gate.puts[f"{PREFIX}/{first}"] == 0 and gate.puts[f"{PREFIX}/{second}"] == 1
    assert _objects(s3_server, bucket) == _local(local)
    assert not list(tmp.iterdir())  # the killed run's temporary folder is gone too


def test_a_shard_replaced_in_the_bucket_is_uploaded_again(data, s3_server, gate, tmp_path):
    """Same size, other bytes: without our metadata, or with it copied (the store's ETag then
    contradicts it): either way the re-run uploads the shard again and the bucket is right."""
    root, _, _ = data
    bucket = _bucket(s3_server)
    url = f"s3://{bucket}/{PREFIX}"
    args = ("--shard-size", "50KB", "--split", "train")
    assert _export("webdataset", root, url, *args, env=_env(gate)).returncode == 0
    good = _objects(s3_server, bucket)
    c = s3_server.client
    names = ["isic2020-train-000000.tar", "isic2020-train-000001.tar"]
    for i, name in enumerate(names):
        key = f"{PREFIX}/{name}"
        meta = c.head_object(Bucket=bucket, Key=key)["Metadata"]
        assert set(meta) == {"isic2020-sha256", "isic2020-etag"}
        blob = bytearray(good[name])
        blob[len(blob) // 2] ^= 0xFF
        c.put_object(Bucket=bucket, Key=key, Body=bytes(blob), **({"Metadata": meta} if i else {}))
    gate.puts.clear()
    r = _export("webdataset", root, url, *args, env=_env(gate))
    assert r.returncode == 0, r.stderr
    assert r.json["splits"][0]["written"] == 2
    assert all(gate.puts[f"{PREFIX}/{n}"] == 1 for n in names)
    assert _objects(s3_server, bucket) == good


def test_a_shard_over_8_mib_is_multipart_and_its_etag_proves_the_recorded_sha256(
    s3_server, gate, tmp_path, monkeypatch
):
    """The destination's contract, on a shard of two 8 MiB parts: the object's ETag is the
    multipart one computed locally before the upload, ``sha256()`` gives the local sha256 while
    that ETag holds, and "" (never matching the index) once the bytes are replaced."""
    from isic2020.training.bucket import BucketDestination
    from isic2020.transfer.objectstore import PART_SIZE

    for k, v in _env(gate).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    bucket = _bucket(s3_server)
    dest = BucketDestination.connect(f"s3://{bucket}/{PREFIX}")
    dest.prepare(tmp_path / "data")
    blob = os.urandom(PART_SIZE + 4321)
    name = "isic2020-train-000000.tar"
    try:
        with dest.writer(name) as fh:
            fh.write(blob)
        assert not list(dest._tmp.iterdir())  # the local temporary is gone
    finally:
        dest.close()
    head = s3_server.client.head_object(Bucket=bucket, Key=f"{PREFIX}/{name}")
    md5s = b"".join(hashlib.md5(blob[i:i + PART_SIZE]).digest()
                    for i in range(0, len(blob), PART_SIZE))
    assert head["ETag"].strip('"') == hashlib.md5(md5s).hexdigest() + "-2"
    assert dest.sizes() == {name: len(blob)}
    assert dest.sha256(name) == hashlib.sha256(blob).hexdigest()
    flipped = bytes([blob[0] ^ 1]) + blob[1:]
    s3_server.upload(bucket, f"{PREFIX}/{name}", flipped, part_size=PART_SIZE)
    assert dest.sha256(name) == ""


def test_unfinished_uploads_of_our_names_are_aborted_once_the_export_completes(
    data, s3_server, gate
):
    """A kill mid-multipart leaves invisible, billed parts: a complete export aborts those of
    our names under the prefix, and leaves anyone else's."""
    bucket = _bucket(s3_server)
    c = s3_server.client
    for key in (f"{PREFIX}/isic2020-train-000099.tar", f"{PREFIX}/theirs.bin", "elsewhere.tar"):
        c.create_multipart_upload(Bucket=bucket, Key=key)
    r = _export("webdataset", data[0], f"s3://{bucket}/{PREFIX}", "--split", "train",
                env=_env(gate))
    assert r.returncode == 0, r.stderr
    left = sorted(u["Key"] for u in c.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    assert left == ["elsewhere.tar", f"{PREFIX}/theirs.bin"]


# --- bad input: one line, a documented exit code, nothing at a final key --------------------

def _fails(r, code: int, *words: str) -> None:
    assert r.returncode == code, r.stderr
    assert len(r.error_lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.error_lines[0], r.error_lines[0]


def test_a_missing_bucket_is_exit_2(data, gate):
    r = _export("webdataset", data[0], "s3://no-such-bucket-here/x", env=_env(gate))
    _fails(r, 2, "does not exist")


def test_credentials_the_store_refuses_are_exit_2_and_none_are_exit_2(
    data, s3_server, gate
):
    bucket = _bucket(s3_server)
    url = f"s3://{bucket}/{PREFIX}"
    _fails(_export("webdataset", data[0], url, env=_env(gate, AWS_ACCESS_KEY_ID="wrong")), 2,
           "InvalidAccessKeyId")
    env = _env(gate)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    _fails(_export("webdataset", data[0], url, env=env), 2, "no AWS credentials")
    assert _objects(s3_server, bucket) == {}


def test_an_unreachable_endpoint_or_an_expired_session_is_exit_3(data, s3_server, tmp_path):
    bucket = _bucket(s3_server)
    url = f"s3://{bucket}/{PREFIX}"
    env = _env(None, AWS_ENDPOINT_URL="http://127.0.0.1:9")  # discard port: refused
    _fails(_export("webdataset", data[0], url, env=env), 3, "AWS_ENDPOINT_URL")
    with HoldingGate(s3_server.endpoint, expired_token=True) as g:
        r = _export("webdataset", data[0], url, env=_env(g, AWS_SESSION_TOKEN="old"))
    _fails(r, 3, "renew it")
    assert _objects(s3_server, bucket) == {}


def test_a_prefix_holding_other_objects_is_refused_and_left_alone(data, s3_server, gate):
    bucket = _bucket(s3_server)
    s3_server.upload(bucket, f"{PREFIX}/notes.txt", b"mine")
    s3_server.upload(bucket, f"{PREFIX}2/isic2020-index.json", b"{}")  # not under the prefix
    _fails(_export("webdataset", data[0], f"s3://{bucket}/{PREFIX}", env=_env(gate)), 2,
           "not isic2020 shards", "notes.txt")
    assert _objects(s3_server, bucket) == {"notes.txt": b"mine"}
    s3_server.upload(bucket, "deep/sub/isic2020-train-000000.tar", b"x")
    _fails(_export("webdataset", data[0], f"s3://{bucket}/deep", env=_env(gate)), 2,
           "sub/isic2020-train-000000.tar")


def test_kaggle_to_s3_and_other_url_schemes_are_exit_2(data, gate, tmp_path):
    _fails(_export("kaggle", data[0], "s3://bucket/x", env=_env(gate)), 2, "--layout kaggle")
    _fails(_export("webdataset", data[0], "gs://bucket/x", env=_env(gate)), 2, "gs://")
    assert not (data[0].parent / "gs:").exists() and not (data[0].parent / "s3:").exists()


def test_a_full_local_temp_disk_is_exit_3_then_the_rerun_completes(
    data, s3_server, gate, tmp_path
):
    """TMPDIR on a real, too small tmpfs: one line, exit 3; the bucket holds only finished
    shards, all in the index, with a local export's bytes; with room the re-run keeps them and
    the bucket equals a local export."""
    from support.fs import small_filesystem

    root, _, _ = data
    args = ("--shard-size", "100KB", "--split", "train")
    local = tmp_path / "local"
    assert _export("webdataset", root, str(local), *args).returncode == 0
    shard = max(p.stat().st_size for p in local.glob("*.tar"))
    bucket = _bucket(s3_server)
    url = f"s3://{bucket}/{PREFIX}"
    mnt = tmp_path / "tmp"
    with small_filesystem(mnt, max(4096, shard // 2 // 4096 * 4096)):
        r = _export("webdataset", root, url, *args, env=_env(gate, TMPDIR=str(mnt)))
        _fails(r, 3, "No space left", "TMPDIR")
        assert not list(mnt.iterdir())  # no temporary left behind
    objects = _objects(s3_server, bucket)
    done = [e["name"] for e in json.loads(objects[INDEX])["splits"]["train"]["shards"]]
    assert sorted(objects) == sorted([INDEX, *done])
    r = _export("webdataset", root, url, *args, env=_env(gate))
    assert r.returncode == 0, r.stderr
    assert _objects(s3_server, bucket) == _local(local)
