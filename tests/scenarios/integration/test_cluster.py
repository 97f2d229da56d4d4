"""Labs and clusters (issue 16): pin once, publish to the lab's bucket, every node fetches from it.

Node A fetches from the "official" bucket (moto, public objects, a manifest without sizes or
checksums, as the shipped one), pins what it proved, mirrors it to ``s3://lab/...``; nodes then
fetch with ``--mirror s3://... --manifest pinned.toml``. Every request to the lab's bucket goes
through :class:`support.s3gate.S3Gate`, which checks credentials and presigned-URL expiry as S3
does (moto does not) and counts the bytes it serves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.s3gate import S3Gate

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.synthetic import build_dataset

pytestmark = pytest.mark.s3

ARCHIVE = "ISIC_2020_Training_JPEG.zip"
TRAIN = ["ISIC_2020_Training_GroundTruth.csv", "ISIC_2020_Training_GroundTruth_v2.csv",
         "ISIC_2020_Training_Duplicates.csv", ARCHIVE]
KiB = 1024
_names = itertools.count()


def _bucket(s3_server, what: str) -> str:
    name = f"{what}-{os.getpid()}-{next(_names)}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    # 256-pixel images: a training zip of about 100 KB, two ranged requests of 64 KiB
    return build_dataset(tmp_path_factory.mktemp("synthetic"), n_train=24, n_test=6,
                         image_size=256)


@pytest.fixture(scope="module")
def unpinned(dataset, tmp_path_factory) -> Path:
    """The synthetic manifest without sizes, ETags and checksums (like the shipped one)."""
    man = load_manifest(dataset.manifest_path)
    files = tuple(dataclasses.replace(f, size=None, etag=None, sha256=None) for f in man.files)
    path = tmp_path_factory.mktemp("unpinned") / "unpinned.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    return path


@pytest.fixture
def gate(s3_server):
    with S3Gate(s3_server.endpoint) as g:
        yield g


def _env(manifest: Path | None, gate: S3Gate | None, **extra: str) -> dict[str, str]:
    """A CLI environment with moto's dummy credentials (``extra`` wins) and the gate as
    ``AWS_ENDPOINT_URL``; nothing inherited from a developer's AWS setup."""
    env = cli_env(manifest)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        env.pop(k, None)
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", ISIC2020_CHUNK_SIZE=str(16 * KiB))
    if gate is not None:
        env["AWS_ENDPOINT_URL"] = gate.endpoint
    env.update(extra)
    return env


def _node_a(tmp_path: Path, dataset, unpinned: Path, s3_server, gate: S3Gate) -> tuple[Path, str]:
    """Fetch the training split from the official bucket, pin it, mirror it to the lab's bucket;
    returns the pinned manifest and the mirror URL."""
    official = _bucket(s3_server, "official")
    for name in TRAIN:
        s3_server.upload(official, name, dataset.path(name))
    a = tmp_path / "A"
    r = run_cli("fetch", "--data-dir", str(a), "--mirror", s3_server.bucket_url(official),
                "--split", "train", "--quiet", env=_env(unpinned, None))
    assert r.returncode == 0, r.stderr
    r = run_cli("pin", "--data-dir", str(a), env=_env(unpinned, None))
    assert r.returncode == 0, r.stderr
    pinned = tmp_path / "pinned.toml"
    pinned.write_text(r.stdout)
    url = f"s3://{_bucket(s3_server, 'lab')}/isic/2020"
    r = run_cli("mirror", url, "--data-dir", str(a), "--split", "train", "--json", "--quiet",
                env=_env(unpinned, gate))
    assert r.returncode == 0, r.stderr
    assert {f["name"]: f["status"] for f in r.json["files"]} == {n: "uploaded" for n in TRAIN}
    return pinned, url


def test_pin_writes_the_exact_size_etag_and_sha256_of_every_verified_file(
    dataset, unpinned, s3_server, gate, tmp_path
):
    pinned, _ = _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    by_name = {f.name: f for f in load_manifest(pinned).files}
    for name in TRAIN:
        data = dataset.path(name).read_bytes()
        assert by_name[name].size == len(data)
        assert by_name[name].sha256 == hashlib.sha256(data).hexdigest()
        assert by_name[name].etag == hashlib.md5(data).hexdigest()  # the official ETag
    for name in ("ISIC_2020_Test_Metadata.csv", "ISIC_2020_Test_JPEG.zip"):  # not fetched
        assert by_name[name].sha256 is None and by_name[name].size is None


def test_mirror_publishes_official_names_and_the_pinned_manifest_and_resumes(
    dataset, unpinned, s3_server, gate, tmp_path
):
    pinned, url = _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    bucket = url.split("/")[2]
    keys = {o["Key"]: o for o in
            s3_server.client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert set(keys) == {f"isic/2020/{n}" for n in [*TRAIN, "isic2020-pinned.toml"]}
    for name in TRAIN:
        assert keys[f"isic/2020/{name}"]["Size"] == dataset.path(name).stat().st_size
    body = s3_server.client.get_object(Bucket=bucket, Key="isic/2020/isic2020-pinned.toml")
    assert body["Body"].read().decode() == pinned.read_text()
    r = run_cli("mirror", url, "--data-dir", str(tmp_path / "A"), "--split", "train", "--json",
                "--quiet", env=_env(unpinned, gate))
    assert r.returncode == 0, r.stderr
    assert {f["status"] for f in r.json["files"]} == {"already there"}
    assert r.json["bytes_published"] == 0


def test_several_nodes_fetch_at_once_from_s3_each_exact_and_proven_by_the_pinned_sha256(
    dataset, unpinned, s3_server, gate, tmp_path
):
    pinned, url = _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    sha = {f.name: f.sha256 for f in load_manifest(pinned).files}
    nodes = [tmp_path / f"node{i}" for i in range(3)]
    procs = [subprocess.Popen(
        cli_cmd("fetch", "--data-dir", str(n), "--mirror", url, "--manifest", str(pinned),
                "--split", "train", "--json", "--quiet"),
        env=_env(None, gate), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in nodes]
    for node, proc in zip(nodes, procs):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        doc = json.loads(out)
        for f in doc["files"]:
            assert f["url"].startswith(gate.endpoint)  # from the lab's bucket
            assert "X-Amz-" not in f["url"]  # no signature in records or reports
            assert f["sha256"] == sha[f["name"]]
            local = node / ("archives" if f["name"].endswith(".zip") else "metadata") / f["name"]
            assert local.read_bytes() == dataset.path(f["name"]).read_bytes()
        got = sorted(p.stem for p in (node / "jpeg" / "train").iterdir())
        assert got == sorted(dataset.train_names)
    size = dataset.path(ARCHIVE).stat().st_size
    assert gate.served[url.split("/", 3)[3] + "/" + ARCHIVE] == 3 * size


def test_a_mirror_with_opaque_etags_is_proven_by_sha256_and_damaged_bytes_fail(
    dataset, unpinned, s3_server, gate, nginx_server_factory, tmp_path
):
    """``mirror`` to a folder, served by nginx (ETags from mtime and size, no content hash):
    the pinned sha256 proves the bytes; one flipped byte is exit 1 with nothing landed."""
    pinned, _ = _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    folder = tmp_path / "folder"
    r = run_cli("mirror", str(folder), "--data-dir", str(tmp_path / "A"), "--split", "train",
                "--quiet", env=_env(unpinned, None))
    assert r.returncode == 0, r.stderr
    assert (folder / "isic2020-pinned.toml").read_text() == pinned.read_text()
    nginx = nginx_server_factory(folder)
    r = run_cli("fetch", "--data-dir", str(tmp_path / "B"), "--mirror", nginx.url, "--manifest",
                str(pinned), "--split", "train", "--json", "--quiet", env=_env(None, None))
    assert r.returncode == 0, r.stderr
    archive = next(f for f in r.json["files"] if f["name"] == ARCHIVE)
    assert "sha256 matches the manifest" in archive["etag_check"]
    blob = bytearray((folder / ARCHIVE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (folder / ARCHIVE).write_bytes(bytes(blob))
    c = tmp_path / "C"
    r = run_cli("fetch", "--data-dir", str(c), "--mirror", nginx.url, "--manifest",
                str(pinned), "--split", "train", "--quiet", env=_env(None, None))
    assert r.returncode == 1, r.stderr
    assert len(r.error_lines) == 1 and "sha256" in r.error_lines[0]
    assert not (c / "archives" / ARCHIVE).exists()
    assert not (c / "jpeg" / "train").exists() or not any((c / "jpeg" / "train").iterdir())


def test_an_archive_over_8_mib_is_uploaded_in_8_mib_parts_and_its_etag_checked(
    s3_server, gate, tmp_path
):
    """The bucket's multipart ETag is reproducible by the engine: a node's fetch says
    ``multipart`` (8 MiB is a part size the engine tries, and moto tells it too)."""
    big = tmp_path / "big"
    ds = build_dataset(big, n_train=4, n_test=2)
    zpath = ds.path(ARCHIVE)
    with zipfile.ZipFile(zpath, "a") as z:  # a stored member makes the zip 9 MiB
        z.writestr(zipfile.ZipInfo("train/padding.bin"), os.urandom(9 * 1024 * KiB))
    man = load_manifest(ds.manifest_path)
    files = tuple(dataclasses.replace(f, size=None, etag=None, sha256=None, published_size=(
        "9 MB" if f.name == ARCHIVE else f.published_size)) for f in man.files)
    unp = tmp_path / "unp.toml"
    unp.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    official = _bucket(s3_server, "official")
    for name in TRAIN:
        s3_server.upload(official, name, ds.path(name))
    a = tmp_path / "A"
    r = run_cli("fetch", "--data-dir", str(a), "--mirror", s3_server.bucket_url(official),
                "--split", "train", "--no-extract", "--quiet", env=_env(unp, None))
    assert r.returncode == 0, r.stderr
    url = f"s3://{_bucket(s3_server, 'lab')}/p"
    r = run_cli("mirror", url, "--data-dir", str(a), "--split", "train", "--json", "--quiet",
                env=_env(unp, gate))
    assert r.returncode == 0, r.stderr
    etag = s3_server.etag(url.split("/")[2], f"p/{ARCHIVE}").strip('"')
    assert etag.endswith("-2")
    r = run_cli("fetch", "--data-dir", str(tmp_path / "B"), "--mirror", url, "--split", "train",
                "--no-extract", "--json", "--quiet", env=_env(unp, gate))
    assert r.returncode == 0, r.stderr
    archive = next(f for f in r.json["files"] if f["name"] == ARCHIVE)
    assert archive["etag"] == etag and archive["etag_check"].startswith("multipart")
    assert (tmp_path / "B" / "archives" / ARCHIVE).read_bytes() == zpath.read_bytes()


def _throttled_fetch(gate: S3Gate, node: Path, url: str, pinned: Path, size: int,
                     env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A fetch of the training split slowed by the gate to about six seconds for the archive,
    returned once a quarter of the archive is on disk (its partial state says so)."""
    gate.rate = size / 6
    proc = subprocess.Popen(
        cli_cmd("fetch", "--data-dir", str(node), "--mirror", url, "--manifest", str(pinned),
                "--split", "train", "--quiet", "-c", "1"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = node / ".isic2020" / "partial" / (ARCHIVE + ".state.json")
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = sum(b - a for a, b in json.loads(state.read_text()).get("done", []))
        except (OSError, ValueError, TypeError):
            done = 0
        if done >= size // 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None and done >= size // 4, "the fetch did not get a quarter in"
    return proc


def test_presigned_urls_are_made_anew_when_they_expire_mid_transfer(
    dataset, unpinned, s3_server, gate, tmp_path
):
    """Mid-transfer, every URL signed so far expires (the gate refuses it with 403 "Request
    has expired"): the fetch completes, because a 403 makes the URL anew."""
    pinned, url = _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    size = dataset.path(ARCHIVE).stat().st_size
    node = tmp_path / "node"
    proc = _throttled_fetch(gate, node, url, pinned, size,
                            _env(None, gate, ISIC2020_CHUNK_SIZE=str(4 * KiB)))
    while time.time() < max(gate.signed_at) + 1.0:  # so "signed before now" covers them
        time.sleep(0.02)
    gate.expire_signed_before(float(int(time.time())))  # X-Amz-Date has whole seconds
    gate.rate = None
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert gate.refused > 0
    assert (node / "archives" / ARCHIVE).read_bytes() == dataset.path(ARCHIVE).read_bytes()


def test_a_kill_during_a_fetch_from_s3_resumes_and_costs_at_most_a_quarter_more(
    dataset, unpinned, s3_server, gate, tmp_path
):
    pinned, url = _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    key = url.split("/", 3)[3] + "/" + ARCHIVE
    gate.served.clear()
    size = dataset.path(ARCHIVE).stat().st_size
    node = tmp_path / "node"
    env = _env(None, gate, ISIC2020_CHUNK_SIZE=str(4 * KiB))
    proc = _throttled_fetch(gate, node, url, pinned, size, env)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    gate.rate = None
    r = run_cli("fetch", "--data-dir", str(node), "--mirror", url, "--manifest", str(pinned),
                "--split", "train", "--json", "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    archive = next(f for f in r.json["files"] if f["name"] == ARCHIVE)
    assert archive["status"] == "resumed"
    assert (node / "archives" / ARCHIVE).read_bytes() == dataset.path(ARCHIVE).read_bytes()
    assert gate.served[key] <= 1.25 * size


# --- bad input: one line, a documented exit code, nothing at a final path ------------------

def _fetch_fails(tmp_path: Path, url: str, env: dict[str, str], code: int, *words: str,
                 manifest: Path | None = None, csvs_land: bool = False) -> None:
    """The fetch fails with ``code`` and one error line holding ``words``; the archive is not
    at its final path (nor anything when the failure comes before the first download)."""
    data = tmp_path / f"fail{next(_names)}"
    args = ["fetch", "--data-dir", str(data), "--mirror", url, "--split", "train", "--quiet"]
    if manifest is not None:
        args += ["--manifest", str(manifest)]
    r = run_cli(*args, env=env)
    assert r.returncode == code, r.stderr
    assert len(r.error_lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.error_lines[0], r.error_lines[0]
    assert not (data / "archives" / ARCHIVE).exists()
    assert csvs_land or not (data / "metadata").exists()


def test_a_missing_bucket_is_exit_2(dataset, gate, tmp_path):
    _fetch_fails(tmp_path, "s3://no-such-bucket-isic/x", _env(dataset.manifest_path, gate), 2,
                 "does not exist")


def test_a_prefix_without_the_files_is_exit_2_naming_them(dataset, s3_server, gate, tmp_path):
    bucket = _bucket(s3_server, "empty")
    _fetch_fails(tmp_path, f"s3://{bucket}/nothing/here", _env(dataset.manifest_path, gate),
                 2, ARCHIVE, "isic2020 mirror")


def test_wrong_credentials_are_exit_2(dataset, unpinned, s3_server, gate, tmp_path):
    _, url = _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    env = _env(dataset.manifest_path, gate, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG")
    _fetch_fails(tmp_path, url, env, 2, "InvalidAccessKeyId", "AWS_ACCESS_KEY_ID")


def test_an_expired_session_is_exit_3(dataset, unpinned, s3_server, gate, tmp_path):
    _, url = _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    gate.expired_token = True
    env = _env(dataset.manifest_path, gate, AWS_SESSION_TOKEN="old-session")
    _fetch_fails(tmp_path, url, env, 3, "expired", "renew")


def test_bytes_that_disagree_with_the_pinned_manifest_are_exit_1(
    dataset, unpinned, s3_server, gate, tmp_path
):
    pinned, url = _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    bucket, prefix = url.split("/")[2], url.split("/", 3)[3]
    blob = bytearray(dataset.path(ARCHIVE).read_bytes())
    blob[100] ^= 0xFF  # same size, other bytes (the store's ETag is their MD5: consistent)
    s3_server.client.put_object(Bucket=bucket, Key=f"{prefix}/{ARCHIVE}", Body=bytes(blob))
    _fetch_fails(tmp_path, url, _env(None, gate), 1, "sha256", manifest=pinned, csvs_land=True)


def test_without_boto3_an_s3_mirror_is_exit_2_naming_the_extra(dataset, gate, tmp_path):
    blocker = tmp_path / "blocker"
    for mod in ("boto3", "botocore"):
        (blocker / mod).mkdir(parents=True)
        (blocker / mod / "__init__.py").write_text(f"raise ImportError('no {mod}')\n")
    env = _env(dataset.manifest_path, gate)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), env.get("PYTHONPATH", "")])
    _fetch_fails(tmp_path, "s3://bucket/prefix", env, 2, "boto3", "isic2020[s3]")


def test_mirror_refuses_a_local_file_that_no_longer_matches_its_record(
    dataset, unpinned, s3_server, gate, tmp_path
):
    _node_a(tmp_path, dataset, unpinned, s3_server, gate)
    a = tmp_path / "A" / "archives" / ARCHIVE
    st = a.stat()
    blob = bytearray(a.read_bytes())
    blob[200] ^= 0xFF
    a.write_bytes(bytes(blob))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # same stat: only the hash can tell
    folder = tmp_path / "folder2"
    r = run_cli("mirror", str(folder), "--data-dir", str(tmp_path / "A"), "--split", "train",
                "--quiet", env=_env(unpinned, None))
    assert r.returncode == 1, r.stderr
    assert len(r.error_lines) == 1 and "sha256" in r.error_lines[0]
    assert not (folder / ARCHIVE).exists()



def test_without_credentials_a_public_bucket_is_read_unsigned(dataset, s3_server, tmp_path):
    """No credentials anywhere (AWS Open Data, as the official bucket): requests go unsigned,
    and the gate sees no signature at all."""
    official = _bucket(s3_server, "public")
    for name in TRAIN:
        s3_server.upload(official, name, dataset.path(name))  # public-read, like isic-archive
    with S3Gate(s3_server.endpoint, access_key=None) as gate:
        env = _env(dataset.manifest_path, gate, AWS_EC2_METADATA_DISABLED="true",
                   AWS_CONFIG_FILE=str(tmp_path / "none"),
                   AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        node = tmp_path / "node"
        r = run_cli("fetch", "--data-dir", str(node), "--mirror", f"s3://{official}",
                    "--split", "train", "--json", "--quiet", env=env)
        assert r.returncode == 0, r.stderr
        assert gate.gets >= len(TRAIN) and gate.signed_requests == 0
    assert (node / "archives" / ARCHIVE).read_bytes() == dataset.path(ARCHIVE).read_bytes()


def test_a_cut_off_multipart_upload_is_resumed_keeping_the_parts_already_there(
    s3_server, gate, tmp_path, monkeypatch
):
    """The API the shards writer uses: ``upload`` finds the unfinished upload of a run that
    was cut off after part 1, sends only part 2, and ``stat`` gives the 8 MiB multipart ETag."""
    from isic2020.transfer.objectstore import PART_SIZE, ObjectStore, upload_etag

    for k, v in _env(None, gate).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    bucket = _bucket(s3_server, "shards")
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(os.urandom(PART_SIZE + 12345))
    c = s3_server.client
    first = c.create_multipart_upload(Bucket=bucket, Key="x/shard-000000.tar")
    with open(path, "rb") as f:
        c.upload_part(Bucket=bucket, Key="x/shard-000000.tar", UploadId=first["UploadId"],
                      PartNumber=1, Body=f.read(PART_SIZE))
    store = ObjectStore.connect(f"s3://{bucket}/x")
    assert store.stat("shard-000000.tar") is None
    stat = store.upload("shard-000000.tar", path)
    _, etag = upload_etag(path)
    assert stat.size == path.stat().st_size and stat.etag == etag and etag.endswith("-2")
    # part 2 and the completion request only: part 1 (8 MiB) is not sent again
    assert 12345 <= gate.received["x/shard-000000.tar"] < 12345 + 4096
    got = c.get_object(Bucket=bucket, Key="x/shard-000000.tar")["Body"].read()
    assert got == path.read_bytes()
    assert store.stat("shard-000000.tar") == stat
