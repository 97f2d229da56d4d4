"""``isic2020 fetch`` against a real nginx (the Debian package) serving the synthetic dataset.

nginx is a production server we did not write: its own range code (sendfile), its own ETags
(``"<mtime hex>-<size hex>"``, not content hashes), its own conditional-request handling. These
tests prove the client copes with it as a user would meet it: a real process, real sockets,
nginx's access log as the witness of what went over the wire.

The engine-level fault tests (FaultServer) are in tests/transfer/test_download.py; the CLI contract
(exit codes, one-line errors) in tests/commands/test_fetch_cli.py. Here: the same promises on nginx.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from support.cli import cli_cmd, cli_env, run_cli
from support.servers import most_at_once

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.synthetic import build_dataset

pytestmark = pytest.mark.nginx

ARCHIVE = "ISIC_2020_Training_JPEG.zip"
KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("synthetic"), n_train=24, n_test=12)


def _fetch(data: Path, mirror: str, *extra: str, manifest: Path, **env: str):
    return run_cli(
        "fetch", "--data-dir", str(data), "--mirror", mirror, "--quiet", *extra,
        env=cli_env(manifest, **env),
    )


def _blob_mirror(dataset, tmp_path: Path, size: int, *, pin: bool = True, seed: int = 1):
    """A mirror folder whose training 'archive' is ``size`` random bytes (fetched with
    ``--no-extract``), the real synthetic CSVs, and a manifest pinning the blob's size and
    sha256 (``pin``) or leaving both empty (then the blob is framed as a zip and its published
    size is its own: an unpinned file must look like the archive, see ``plausible``)."""
    root = tmp_path / "blobmirror"
    root.mkdir()
    blob = __import__("random").Random(seed).randbytes(size)
    if not pin:
        blob = _zipish(blob)
    man = load_manifest(dataset.manifest_path)
    files = []
    for f in man.files:
        if f.name == ARCHIVE:
            (root / f.name).write_bytes(blob)
            f = dataclasses.replace(
                f,
                size=len(blob) if pin else None,
                sha256=hashlib.sha256(blob).hexdigest() if pin else None,
                published_size=f.published_size if pin else f"{len(blob) / 1e6:.1f} MB",
            )
        elif f.kind == "metadata":
            (root / f.name).write_bytes(dataset.path(f.name).read_bytes())
        files.append(f)
    path = tmp_path / "blob.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=tuple(files))))
    return root, path, blob


def _zipish(data: bytes) -> bytes:
    """``data`` (same length) with a zip's local-header magic first and an empty end record
    last: what the content checks of an unpinned archive look for."""
    return b"PK\x03\x04" + data[4:-22] + b"PK\x05\x06" + bytes(18)


def _unpinned_manifest(dataset, tmp_path: Path) -> Path:
    """The synthetic manifest without sha256 (sizes kept): only the ETag could prove content."""
    man = load_manifest(dataset.manifest_path)
    files = tuple(dataclasses.replace(f, sha256=None) for f in man.files)
    path = tmp_path / "unpinned.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    return path


def _body_bytes(nginx, name: str) -> int:
    """Body bytes of the object itself that nginx sent (200/206; not error pages)."""
    path = nginx.url_path(name)
    return sum(
        e.body_bytes_sent
        for e in nginx.log_entries()
        if e.path == path and e.status in (200, 206) and e.method == "GET"
    )


# --------------------------------------------------------------------------------------------
# The whole job against nginx


def test_fetch_all_jpeg_from_nginx_extracts_and_verifies_exact_bytes(
    dataset, nginx_server_factory, tmp_path
):
    nginx = nginx_server_factory(dataset.root)
    data = tmp_path / "data"
    r = _fetch(data, nginx.url, "--split", "all", "--format", "jpeg", "--json",
               manifest=dataset.manifest_path, ISIC2020_CHUNK_SIZE=str(16 * KiB))
    assert r.returncode == 0, r.stderr
    doc = r.json
    assert doc["ok"] is True and doc["exit_code"] == 0
    assert doc["verification"]["exit_code"] == 0
    by_name = {f["name"]: f for f in doc["files"]}
    assert set(by_name) == {f.name for f in dataset.manifest.select("all", "jpeg")}
    for name, entry in by_name.items():
        want = dataset.path(name).read_bytes()
        final = data / ("archives" if name.endswith(".zip") else "metadata") / name
        assert final.read_bytes() == want
        assert entry["size"] == len(want)
        assert entry["bytes_transferred"] == len(want)  # exact: nothing fetched twice
        assert entry["sha256"] == hashlib.sha256(want).hexdigest()
        assert entry["status"] == "downloaded"
        # nginx's ETag is "<mtime>-<size>" in hex: the tool must never call it checked.
        head = requests.head(nginx.url_for(name), timeout=5)
        assert entry["etag"] == head.headers["ETag"].strip('"')
        assert entry["etag"].endswith("-" + format(len(want), "x"))
        assert entry["etag_check"] not in ("md5", "multipart")
    # nginx sent each object exactly once (ranged: the archives are > one 16 KiB chunk).
    for name in by_name:
        assert _body_bytes(nginx, name) == dataset.path(name).stat().st_size
    assert any(e.range for e in nginx.log_entries() if e.path.endswith(ARCHIVE))
    for split, names in (("train", dataset.train_names), ("test", dataset.test_names)):
        got = sorted(p.stem for p in (data / "jpeg" / split).iterdir())
        assert got == sorted(names)
    # Extraction wrote exactly the zips' images.
    import zipfile

    with zipfile.ZipFile(dataset.archive("train", "jpeg")) as zf:
        for n in dataset.train_names[:5]:
            assert (data / "jpeg" / "train" / f"{n}.jpg").read_bytes() == zf.read(
                f"train/{n}.jpg"
            )


def test_nginx_etag_is_reported_unverifiable_when_nothing_else_proves_content(
    dataset, nginx_server_factory, tmp_path
):
    nginx = nginx_server_factory(dataset.root)
    manifest = _unpinned_manifest(dataset, tmp_path)
    r = _fetch(tmp_path / "d", nginx.url, "--split", "test", "--format", "none", "--json",
               manifest=manifest)
    assert r.returncode == 0, r.stderr
    (entry,) = r.json["files"]
    assert entry["etag_check"].startswith("unverifiable"), entry["etag_check"]
    assert "not a content hash" in entry["etag_check"]


def test_nginx_etag_with_pinned_sha256_says_etag_unverifiable_and_sha256_checked(
    dataset, nginx_server_factory, tmp_path
):
    """nginx's ETags (``"mtime-size"``) are no content hash: ``--json``'s ``etag_check``
    says ``unverifiable`` and names the manifest's sha256 as what proved the bytes, so the
    JSON never suggests the server's ETag proved anything."""
    nginx = nginx_server_factory(dataset.root)
    r = _fetch(tmp_path / "d", nginx.url, "--split", "test", "--format", "none", "--json",
               manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    (entry,) = r.json["files"]
    check = entry["etag_check"]
    assert check.startswith("unverifiable"), check
    assert "sha256" in check, check


def test_bytes_not_matching_the_pinned_sha256_are_refused_exit_1(
    dataset, nginx_server_factory, tmp_path
):
    """nginx's ETag cannot catch a wrong file; the manifest's sha256 does (same size, other
    bytes): exit 1, one line, nothing at the final path, no partial left to resume from."""
    root = tmp_path / "wrong"
    root.mkdir()
    for f in dataset.metadata_files():
        (root / f.name).write_bytes(f.read_bytes())
    good = dataset.archive("train", "jpeg").read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 3] ^= 0x01
    (root / ARCHIVE).write_bytes(bytes(bad))
    nginx = nginx_server_factory(root)
    data = tmp_path / "d"
    r = _fetch(data, nginx.url, "--split", "train", "--format", "jpeg",
               manifest=dataset.manifest_path)
    assert r.returncode == 1, r.stderr
    assert len(r.error_lines) == 1 and "sha256" in r.error_lines[0], r.stderr
    assert ARCHIVE in r.error_lines[0]
    assert "Traceback" not in r.stderr
    assert not (data / "archives" / ARCHIVE).exists()
    assert not list((data / ".isic2020" / "partial").glob(ARCHIVE + "*"))
    assert not (data / "jpeg" / "train").exists()


# --------------------------------------------------------------------------------------------
# What the client relies on from nginx: strict ranges and If-Match


def test_nginx_honours_if_match_and_ranges_as_the_client_relies_on(
    dataset, nginx_server_factory
):
    """Every ranged GET of the client carries If-Match with the first answer's ETag and needs
    206 + exactly the Content-Range asked for; a changed object must give 412, never the new
    bytes under the old validator. nginx 1.22 does all of that (checked here, not assumed)."""
    nginx = nginx_server_factory(dataset.root)
    url = nginx.url_for(ARCHIVE)
    body = dataset.path(ARCHIVE).read_bytes()
    head = requests.head(url, timeout=5, headers={"Accept-Encoding": "identity"})
    etag = head.headers["ETag"]
    assert head.headers["Accept-Ranges"] == "bytes"
    assert int(head.headers["Content-Length"]) == len(body)
    ok = requests.get(url, timeout=5, headers={"Range": "bytes=100-1099", "If-Match": etag})
    assert ok.status_code == 206
    assert ok.headers["Content-Range"] == f"bytes 100-1099/{len(body)}"
    assert ok.content == body[100:1100]
    stale = requests.get(url, timeout=5, headers={"Range": "bytes=100-1099",
                                                  "If-Match": '"0-0"'})
    assert stale.status_code == 412  # the engine maps 412 to "object changed, start over"
    weak = requests.get(url, timeout=5, headers={"Range": "bytes=0-9", "If-Match": "W/" + etag})
    assert weak.status_code == 412  # If-Match is a strong comparison
    # The engine never relies on If-Range, but nginx honours it (a stale one gives 200 + all).
    stale_if_range = requests.get(url, timeout=5, headers={"Range": "bytes=0-9",
                                                           "If-Range": '"0-0"'})
    assert stale_if_range.status_code == 200 and stale_if_range.content == body
    past_end = requests.get(url, timeout=5, headers={"Range": f"bytes={len(body)}-"})
    assert past_end.status_code == 416
    # gzip is off for the mirror and the client asks for identity anyway: no re-encoding.
    assert "Content-Encoding" not in ok.headers


def test_object_replaced_on_nginx_mid_download_restarts_with_the_new_object(
    dataset, nginx_server_factory, tmp_path
):
    """A file replaced on the mirror while it downloads: nginx's ETag changes (new mtime and
    size), the next ranged GET gets 412 from If-Match, and the client starts over: what lands
    is exactly the new file, never a splice of the two versions."""
    root, manifest, old = _blob_mirror(dataset, tmp_path, 3 * MiB, pin=False)
    new = _zipish(os.urandom(3 * MiB + 4321))
    nginx = nginx_server_factory(root, limit_rate=1_000_000)
    data = tmp_path / "d"
    proc = subprocess.Popen(
        cli_cmd("fetch", "--data-dir", str(data), "--mirror", nginx.url, "--split", "train",
                "--format", "jpeg", "--no-extract", "--connections", "4", "--json"),
        env=cli_env(manifest, ISIC2020_CHUNK_SIZE=str(128 * KiB)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    state = data / ".isic2020" / "partial" / (ARCHIVE + ".state.json")
    deadline = time.monotonic() + 20
    while not _done_bytes(state) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # some ranges of the old object are done
    assert proc.poll() is None and _done_bytes(state), "no range done before the change"
    tmp = root / (ARCHIVE + ".new")
    tmp.write_bytes(new)
    os.replace(tmp, root / ARCHIVE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "changed" in err  # the restart is said, not silent
    final = data / "archives" / ARCHIVE
    assert final.read_bytes() == new
    entry = next(f for f in __import__("json").loads(out)["files"] if f["name"] == ARCHIVE)
    assert entry["size"] == len(new)
    assert entry["etag"].endswith("-" + format(len(new), "x"))
    assert any(e.status == 412 for e in nginx.log_entries() if e.path.endswith(ARCHIVE))


# --------------------------------------------------------------------------------------------
# Parallel ranges and resume, witnessed by nginx


def _done_bytes(state: Path) -> int:
    """Bytes a partial download's state file records as done (0 while it does not exist)."""
    try:
        doc = json.loads(state.read_text())
    except (FileNotFoundError, ValueError):
        return 0
    return sum(b - a for a, b in doc.get("done", []))


def test_rate_limited_nginx_is_fetched_with_several_concurrent_ranges(
    dataset, nginx_server_factory, tmp_path
):
    """With nginx's per-connection limit_rate, only parallel ranges make the download fast:
    at 1 MB/s per connection a 4 MiB file takes ~4.2 s on one connection. With
    ``--connections 4``, nginx's own log shows the ranges served over several connections and
    several of them in flight at the same moment (each takes ~0.26 s at the rate limit, so a
    serial client could never overlap two). Counted from the log, not timed: the speed itself
    is measured in benchmarks/."""
    root, manifest, blob = _blob_mirror(dataset, tmp_path, 4 * MiB)
    nginx = nginx_server_factory(root, limit_rate=1_000_000)
    data = tmp_path / "d"
    r = _fetch(data, nginx.url, "--split", "train", "--format", "jpeg", "--no-extract",
               "--connections", "4", "--json", manifest=manifest,
               ISIC2020_CHUNK_SIZE=str(256 * KiB))
    assert r.returncode == 0, r.stderr
    assert (data / "archives" / ARCHIVE).read_bytes() == blob
    ranged = [e for e in nginx.log_entries() if e.path.endswith(ARCHIVE) and e.status == 206]
    assert len(ranged) >= 16  # 4 MiB in 256 KiB ranges
    assert all(e.range.startswith("bytes=") for e in ranged)
    assert len({e.connection for e in ranged}) >= 3, "ranges came over fewer than 3 connections"
    at_once = most_at_once(ranged)
    assert at_once >= 3, f"at most {at_once} ranges in flight at once: no parallel transfer"
    assert _body_bytes(nginx, ARCHIVE) == len(blob)


@pytest.mark.slow
def test_sigkill_during_nginx_download_resumes_with_little_refetched(
    dataset, nginx_server_factory, tmp_path
):
    """kill -9 a few times mid-download from nginx, then run again: the file is exact and
    nginx's own access log shows less than 1.5x the file size sent in total."""
    root, manifest, blob = _blob_mirror(dataset, tmp_path, 6 * MiB)
    nginx = nginx_server_factory(root, limit_rate=800_000)
    data = tmp_path / "d"
    env = cli_env(manifest, ISIC2020_CHUNK_SIZE=str(128 * KiB))
    args = cli_cmd("fetch", "--data-dir", str(data), "--mirror", nginx.url, "--split", "train",
                   "--format", "jpeg", "--no-extract", "--connections", "4", "--quiet")
    state = data / ".isic2020" / "partial" / (ARCHIVE + ".state.json")
    final = data / "archives" / ARCHIVE
    for _ in range(4):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # kill once this run has finished at least one more chunk of the archive (start-up and
        # CSVs are done, the transfer is under way), not after a guessed delay
        before = _done_bytes(state)
        deadline = time.monotonic() + 20
        while _done_bytes(state) < before + 128 * KiB and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "finished before the kill: the test proves nothing"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert state.exists() and not final.exists()
    done_before = __import__("json").loads(state.read_text())["done"]
    assert done_before, "no chunk finished before the kills"
    r = run_cli(*args[3:], "--json", env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    (entry,) = [f for f in r.json["files"] if f["name"] == ARCHIVE]
    assert entry["status"] == "resumed"
    assert entry["bytes_transferred"] < len(blob)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == hashlib.sha256(blob).hexdigest()
    time.sleep(0.3)  # nginx logs a killed connection when it notices the peer is gone
    served = _body_bytes(nginx, ARCHIVE)
    assert len(blob) <= served < 1.5 * len(blob), f"{served} bytes sent for {len(blob)}"
    assert not list((data / ".isic2020" / "partial").iterdir())


def test_repair_without_the_archive_fetches_only_the_missing_members_from_nginx(
    dataset, nginx_server_factory, tmp_path
):
    """After ``--no-keep-archives``, two images deleted and one truncated: the same fetch
    against nginx asks only for those members' byte ranges (nginx's log is the witness) and
    the folder verifies again."""
    import zipfile

    nginx = nginx_server_factory(dataset.root)
    data = tmp_path / "data"
    args = ("--split", "train", "--format", "jpeg", "--no-keep-archives")
    assert _fetch(data, nginx.url, *args, manifest=dataset.manifest_path).returncode == 0
    folder = data / "jpeg" / "train"
    victims = sorted(f"{n}.jpg" for n in dataset.train_names[:3])
    for v in victims[:2]:
        (folder / v).unlink()
    (folder / victims[2]).write_bytes((folder / victims[2]).read_bytes()[:100])
    with zipfile.ZipFile(dataset.path(ARCHIVE)) as zf:
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        originals = {i.filename.rsplit("/", 1)[-1]: zf.read(i) for i in infos}
    ends = {i.filename.rsplit("/", 1)[-1]: (i.header_offset,
            infos[k + 1].header_offset if k + 1 < len(infos) else None)
            for k, i in enumerate(infos)}
    assert all(ends[v][1] is not None for v in victims)  # (none of them is the last member)
    wanted = sum(ends[v][1] - ends[v][0] for v in victims)
    before = len(nginx.log_entries())
    r = _fetch(data, nginx.url, *args, "--json", manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    assert r.json["repaired"] == 3
    path = nginx.url_path(ARCHIVE)
    served = [e for e in nginx.log_entries()[before:] if e.request_uri == path]
    gets = [e for e in served if e.method == "GET"]
    assert gets and all(e.status == 206 and e.range for e in gets)
    assert sum(e.body_bytes_sent for e in served) <= wanted * 1.05
    for v in victims:
        assert (folder / v).read_bytes() == originals[v]
    v = run_cli("verify", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
                env=cli_env(dataset.manifest_path))
    assert v.returncode == 0, v.stdout + v.stderr
