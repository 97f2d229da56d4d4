"""The rows of README.md's fault matrix ("Fault matrix") not already proven elsewhere.

Each test is one row: what is tried, and what the user sees (exit code, one line on stderr,
what is left on disk, whether the same command resumes). Rows already covered live in
tests/transfer/test_download.py, tests/commands/test_fetch_cli.py,
tests/transfer/test_range_properties.py, tests/archive/test_extract.py and the integration tests
(tests/scenarios/integration/); the table says which test proves which row.

Everything runs against real servers on 127.0.0.1 (tests/support/servers/), real
filesystems (tests/support/fs.py) and the real ``isic2020`` process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import http.server
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.dataset import flip_byte
from support.fixtures import served_dataset
from support.fs import small_filesystem
from support.netpeers import self_signed_certificate
from support.servers import (
    ExtraHeaders,
    FaultServer,
    Stall,
    Status,
    Throttle,
    free_port,
    ranged,
    unresolvable_url,
)
from support.snapshot import changed, snapshot
from support.source_audit import package_offences, process_offences, tls_offences

import isic2020
from isic2020.catalog.manifest import load_manifest, manifest_to_toml, parse_manifest
from isic2020.errors import ManifestError
from isic2020.synthetic import build_dataset, official_manifest
from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts, make_session
from isic2020.transfer.model import DownloadOptions
from isic2020.transfer.retry import RetryPolicy

PREFIX = "/challenges/2020/"
ARCHIVE = "ISIC_2020_Training_JPEG.zip"
TEST_CSV = "ISIC_2020_Test_Metadata.csv"
KiB = 1024
MiB = 1024 * KiB
SRC = Path(isic2020.__file__).parent


dataset, mirror = served_dataset("synthetic", n_train=24, n_test=12)


def _fetch(data: Path, *mirrors: str, extra: tuple[str, ...] = (), manifest: Path, **env: str):
    args = ["fetch", "--data-dir", str(data), "--quiet", *extra]
    for m in mirrors:
        args += ["--mirror", m]
    return run_cli(*args, env=cli_env(manifest, **env))


def _one_error_line(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.error_lines) == 1, r.stderr
    return r.error_lines[0]


def _fetched(dataset, tmp_path: Path, mirror: FaultServer, *extra: str) -> Path:
    data = tmp_path / "data"
    r = _fetch(data, mirror.url, extra=extra, manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    return data


# --------------------------------------------------------------------------------------------
# Network faults not covered at this level elsewhere


def test_503_slowdown_retry_after_is_waited_for(tmp_path):
    """503 SlowDown with ``Retry-After: 2`` on one connection: every connection waits those
    2 s (not only the one that was told, and not its own sub-second backoff), then the file is
    finished exactly. (tests/transfer/test_download.py proves the retry; this proves the wait.)

    Chunk 0 comes in ~0.3 s, the other chunks in ~1.1 s, so when the connection that did
    chunk 0 asks for its next chunk and gets the 503, the three others are still reading
    their bodies: none of them may send a request in the 2 s after the 503, as the server's
    log shows (arrival times on the machine's one monotonic clock)."""
    root = tmp_path / "mirror"
    root.mkdir()
    data = os.urandom(MiB + 17)
    (root / ARCHIVE).write_bytes(data)
    chunk = 128 * KiB
    opts = DownloadOptions(
        connections=4, chunk_size=chunk, timeouts=Timeouts(connect=2, read=5),
        retry=RetryPolicy(base=0.01, cap=0.1, window=20),
    )
    with FaultServer(root, prefix=PREFIX) as srv:
        # the first matching rule of a kind wins: chunks 1.. slow, chunk 0 less so (all four
        # connections have sent their first request before chunk 0 is done)
        srv.add_fault(Throttle(bytes_per_second=120_000), ARCHIVE, times=None,
                      when=lambda req: req.ranged and req.start >= chunk)
        srv.add_fault(Throttle(bytes_per_second=400_000), ARCHIVE, times=None, when=ranged)
        srv.add_fault(Status.slow_down(retry_after=2), ARCHIVE, times=1,
                      when=lambda req: req.ranged and req.start >= 4 * chunk)
        d = Downloader(opts)
        try:
            res = d.download(ARCHIVE, [srv.url_for(ARCHIVE)], tmp_path / "p" / "x.part",
                             tmp_path / "p" / "x.json", tmp_path / "out" / ARCHIVE)
        finally:
            d.close()
        gets = [r for r in srv.requests(ARCHIVE, "GET") if r.header("Range")]
    assert (tmp_path / "out" / ARCHIVE).read_bytes() == data
    (slow_down,) = [r for r in gets if r.status == 503]
    assert res.retries >= 1
    t503 = slow_down.arrived
    before = [r for r in gets if r.arrived < t503]
    assert len({r.peer for r in before}) == 4, "the 503 did not come while 4 connections ran"
    inside = [(round(r.arrived - t503, 3), r.header("Range"), r.peer) for r in gets
              if t503 < r.arrived < t503 + 2.0]
    assert inside == [], f"requests inside the Retry-After window: {inside}"
    after = [r for r in gets if r.arrived >= t503 + 2.0]
    assert after and all(r.status == 206 for r in after)


@pytest.mark.parametrize(
    "where", ["body", pytest.param("headers", marks=pytest.mark.slow)]  # ~7 s: 3 HEAD timeouts
)
def test_server_that_stalls_forever_ends_in_exit_3_not_a_hang(dataset, tmp_path, where):
    """A server that accepts and then sends nothing (after the headers of a ranged GET, or not
    even the HEAD's headers): the read timeout fires on every attempt and after
    ``$ISIC2020_RETRY_WINDOW`` seconds without progress the run ends: exit 3, one line.
    The stalls last 600 s, beyond the CLI's 120 s subprocess timeout, and none had ended when
    the CLI returned: the client gave up on its own (a hang fails the subprocess timeout)."""
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        if where == "body":
            srv.add_fault(Stall(seconds=600, after=0), ARCHIVE, times=None, when=ranged)
        else:
            srv.add_fault(Stall(seconds=600, before_headers=True), ARCHIVE, times=None)
        r = _fetch(data, srv.url, extra=("--split", "train", "--format", "jpeg"),
                   manifest=dataset.manifest_path, ISIC2020_READ_TIMEOUT="1",
                   ISIC2020_RETRY_WINDOW="2", ISIC2020_CHUNK_SIZE=str(16 * KiB))
        ended = [q for q in srv.requests(ARCHIVE, settle=0) if q.outcome == "stall"]
    assert r.returncode == 3, r.stderr
    line = _one_error_line(r)
    assert ARCHIVE in line and "timed out" in line
    assert ended == [], "a stall ended before the client gave up"
    assert not (data / "archives" / ARCHIVE).exists()
    # What finished before the stall is kept: the CSVs came through.
    assert (data / "metadata" / TEST_CSV).exists() is False  # --split train: no test CSV
    assert (data / "metadata" / "ISIC_2020_Training_GroundTruth.csv").exists()


def test_dns_failure_is_exit_3_naming_dns_and_a_later_mirror_takes_over(
    dataset, mirror, tmp_path, monkeypatch
):
    """A host name that does not resolve: asked once (no retries: they cannot help), the next
    mirror gets the work; with no other mirror, exit 3 and one line naming DNS."""
    dead = unresolvable_url(PREFIX).rstrip("/")
    dead_host = urllib.parse.urlsplit(dead).hostname
    # In-process, to count the look-ups: the real resolver, watched (not replaced).
    lookups: list[str] = []
    resolve = socket.getaddrinfo

    def watched(host, *args, **kwargs):
        lookups.append(host)
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", watched)
    report = isic2020.fetch(split="test", fmt="none", data_dir=tmp_path / "api",
                            manifest=dataset.manifest_path, mirrors=[dead, mirror.url])
    monkeypatch.undo()
    (entry,) = report.to_dict()["files"]
    assert lookups.count(dead_host) == 1, lookups
    assert entry["url"].startswith(mirror.url) and "DNS" in entry["failed_hosts"][0]
    assert mirror.bytes_sent(TEST_CSV) == dataset.path(TEST_CSV).stat().st_size
    data = tmp_path / "d"
    extra = ("--split", "test", "--format", "none", "--json")
    r = _fetch(data, dead, extra=extra, manifest=dataset.manifest_path)
    assert r.returncode == 3, r.stderr
    line = _one_error_line(r)
    assert "DNS" in line and TEST_CSV in line
    assert not (data / "metadata" / TEST_CSV).exists()
    r = _fetch(data, dead, mirror.url, extra=extra, manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    (entry,) = r.json["files"]
    assert entry["url"].startswith(mirror.url)
    assert len(entry["failed_hosts"]) == 1 and "DNS" in entry["failed_hosts"][0]
    assert (data / "metadata" / TEST_CSV).read_bytes() == dataset.path(TEST_CSV).read_bytes()


def test_mirror_with_another_size_than_the_manifest_is_skipped_for_the_next(
    dataset, mirror, tmp_path
):
    """A mirror holding a different file (size differs from the manifest's): it is never used;
    the next mirror serves the file; with no other mirror the run ends with exit 3, one line
    naming both sizes. (The engine-level refusal is in tests/transfer/test_download.py.)"""
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / TEST_CSV).write_bytes(dataset.path(TEST_CSV).read_bytes()[:-40])
    data = tmp_path / "d"
    extra = ("--split", "test", "--format", "none", "--json")
    want = dataset.path(TEST_CSV).stat().st_size
    with FaultServer(stale, prefix=PREFIX) as bad:
        r = _fetch(data, bad.url, extra=extra, manifest=dataset.manifest_path)
        assert r.returncode == 3, r.stderr
        line = _one_error_line(r)
        assert f"serves {want - 40} bytes but the manifest says {want}" in line
        assert bad.bytes_sent() == 0  # refused on its HEAD: not a byte downloaded
        r = _fetch(data, bad.url, mirror.url, extra=extra, manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    (entry,) = r.json["files"]
    assert "manifest says" in entry["failed_hosts"][0]
    assert (data / "metadata" / TEST_CSV).read_bytes() == dataset.path(TEST_CSV).read_bytes()


# --------------------------------------------------------------------------------------------
# Disk, lock


def test_disk_full_during_extraction_exits_3_then_resumes_after_space_is_freed(tmp_path):
    """A real full disk (tmpfs) while ``fetch`` unpacks: the pre-check passes (images are about
    the archive's size) but each small image takes a whole page on tmpfs, so the disk fills
    during extraction. Exit 3, one line; finished images stay; after space is freed the same
    command finishes without downloading again."""
    ds = build_dataset(tmp_path / "m", n_train=300, n_test=4)
    with FaultServer(ds.root, prefix=PREFIX) as srv, small_filesystem(
        tmp_path / "fs", 4 * MiB
    ) as fs:
        data = fs / "data"
        args = ("--split", "train", "--format", "jpeg")
        r = _fetch(data, srv.url, extra=(*args, "--no-extract"), manifest=ds.manifest_path)
        assert r.returncode == 0, r.stderr
        archive_size = (data / "archives" / ARCHIVE).stat().st_size
        # Leave room for twice the archive (any up-front estimate passes), far less than
        # 300 images x one 4 KiB page each.
        leave = 2 * archive_size + 64 * KiB
        assert leave < 300 * 4096 * 0.8
        filler = fs / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(fs).free - leave))
        sent = srv.bytes_sent()
        r = _fetch(data, srv.url, extra=args, manifest=ds.manifest_path)
        assert r.returncode == 3, r.stderr
        line = _one_error_line(r)
        assert "disk full" in line or "disk is full" in line, line
        dest = data / "jpeg" / "train"
        done = [p for p in dest.iterdir() if not p.name.startswith(".")]
        assert 0 < len(done) < 300
        assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temp left
        filler.unlink()
        r = _fetch(data, srv.url, extra=(*args, "--json"), manifest=ds.manifest_path)
        assert r.returncode == 0, r.stderr
        assert r.json["bytes_transferred"] == 0 and srv.bytes_sent() == sent
        assert sorted(p.stem for p in dest.iterdir()) == sorted(ds.train_names)


def test_second_fetch_with_lock_timeout_gives_up_with_exit_3(dataset, mirror, tmp_path):
    """Another isic2020 holds the data directory (its lock taken here, as it would): a
    ``fetch --lock-timeout`` waits that long, then exit 3 with one line naming the holder.
    (Two real fetches that wait for each other: tests/commands/test_fetch_cli.py.)"""
    data = tmp_path / "d"
    lock = data / ".isic2020" / "lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        t0 = time.monotonic()
        r = _fetch(data, mirror.url, extra=("--format", "none", "--lock-timeout", "1"),
                   manifest=dataset.manifest_path)
        elapsed = time.monotonic() - t0
    finally:
        os.close(fd)
    assert r.returncode == 3, r.stderr
    line = _one_error_line(r)
    assert "another isic2020" in line and f"pid {os.getpid()}" in line
    # It waited (a lower bound: a busy machine only makes it later) and then gave up on its
    # own, while the lock was still held (waiting for ever fails the subprocess timeout).
    assert elapsed >= 1
    assert mirror.bytes_sent() == 0
    assert not (data / "metadata").exists()


# --------------------------------------------------------------------------------------------
# Damaged data found by verify; malformed inputs


def test_flipped_byte_in_an_archive_is_found_by_verify(dataset, mirror, tmp_path):
    """One flipped byte in DATA/archives/<zip> (the file's mtime changes, as with any write):
    ``isic2020 verify`` re-hashes it, exit 1, the archive is named as damaged."""
    data = _fetched(dataset, tmp_path, mirror, "--split", "train", "--format", "jpeg")
    flip_byte(data / "archives" / ARCHIVE, f"train/{dataset.train_names[5]}.jpg")
    r = run_cli("verify", "--data-dir", str(data), "--split", "train", "--json",
                env=cli_env(dataset.manifest_path))
    assert r.returncode == 1, r.stderr
    doc = r.json
    assert doc["failed"] == [f"archive/{ARCHIVE}"]
    (check,) = [c for c in doc["checks"] if c["name"] == f"archive/{ARCHIVE}"]
    assert "damaged" in check["message"]
    assert any("isic2020 fetch" in p for p in check["problems"])


def _malformed_csv(data: Path) -> None:
    p = data / "metadata" / TEST_CSV
    lines = p.read_bytes().split(b"\r\n")
    lines[3] = b"ISIC_12,IP_x,maybe,400,torso"  # bad name, patient, sex, age
    p.write_bytes(b"\r\n".join(lines))


def test_malformed_csv_is_found_by_verify_exit_1(dataset, mirror, tmp_path):
    data = _fetched(dataset, tmp_path, mirror, "--split", "test", "--format", "none")
    _malformed_csv(data)
    r = run_cli("verify", "--data-dir", str(data), "--split", "test", "--format", "none",
                "--json", env=cli_env(dataset.manifest_path))
    assert r.returncode == 1, r.stderr
    assert f"metadata/{TEST_CSV}" in r.json["failed"]
    (check,) = [c for c in r.json["checks"] if c["name"] == f"metadata/{TEST_CSV}"]
    # each of the four injected errors is named, with its column, in a problem of its own
    injected = [("'ISIC_12'", "image name"), ("'IP_x'", "patient_id"), ("'maybe'", "sex"),
                ("'400'", "age_approx")]
    assert len(check["problems"]) == len(injected), check["problems"]
    for value, column in injected:
        (hit,) = [p for p in check["problems"] if value in p]
        assert column in hit, hit


@pytest.mark.parametrize("damage", ["flipped byte in archive", "malformed CSV"])
def test_verify_failure_is_one_error_line_on_stderr(dataset, mirror, tmp_path, damage):
    """README: every failure is one line on stderr, ``isic2020: error: <what>; <what to do>``.
    A failed ``verify`` (exit 1) prints its report on stdout and, on stderr, one line naming
    what failed, so a script that logs only stderr never sees a silent exit 1."""
    if damage == "malformed CSV":
        data = _fetched(dataset, tmp_path, mirror, "--split", "test", "--format", "none")
        _malformed_csv(data)
        args, named = ("--split", "test", "--format", "none"), TEST_CSV
    else:
        data = _fetched(dataset, tmp_path, mirror, "--split", "train", "--format", "jpeg")
        flip_byte(data / "archives" / ARCHIVE, f"train/{dataset.train_names[5]}.jpg")
        args, named = ("--split", "train"), ARCHIVE
    r = run_cli("verify", "--data-dir", str(data), *args, env=cli_env(dataset.manifest_path))
    assert r.returncode == 1
    line = _one_error_line(r)
    assert line.startswith("isic2020: error: verification failed:") and named in line
    what_to_do = line.split("; ", 1)[1] if "; " in line else ""
    assert "isic2020 fetch" in what_to_do, line


def _manifest_variant(dataset, tmp_path: Path, old: str, new: str) -> Path:
    text = dataset.manifest_path.read_text()
    assert old in text
    p = tmp_path / "bad.toml"
    p.write_text(text.replace(old, new, 1))
    return p


@pytest.mark.parametrize(
    ("old", "new", "entry", "named"),
    [  # entry None: the fault is not inside an entry (the TOML itself, the top-level schema)
        ("schema = 1", "schema = [", None, ("not valid TOML", "line 5")),
        ("schema = 1", "schema = 2", None, ("field 'schema'", "found 2")),
        ('hosts = ["https://', 'hosts = ["http://', "ISIC_2020_Training_GroundTruth.csv",
         ("field 'hosts'", "http://")),
        ('sha256 = "', 'sha256 = "xyz', "ISIC_2020_Training_GroundTruth.csv",
         ("field 'sha256'", "xyz")),
        ('name = "ISIC_2020_Training_JPEG.zip"', 'name = "../evil.zip"', "../evil.zip",
         ("field 'name'",)),
        ("images = 24", "images = -1", "ISIC_2020_Training_JPEG.zip", ("field 'images'", "-1")),
    ],
    ids=["not-toml", "schema", "http-host", "sha256", "path-in-name", "negative-count"],
)
def test_malformed_manifest_exit_2_one_line_naming_the_file(
    dataset, tmp_path, old, new, entry, named
):
    """Exit 2, one line naming the file, the entry (when the fault is in one) and the field
    with the bad value, then what to do; nothing written. (A bad field value, ``format``:
    tests/commands/test_fetch_cli.py::test_broken_manifest_names_file_entry_and_field.)"""
    bad = _manifest_variant(dataset, tmp_path, old, new)
    r = run_cli("fetch", "--data-dir", str(tmp_path / "d"), env=cli_env(bad))
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r)
    what, _, to_do = line.partition("; ")
    assert f"manifest {bad}:" in what, line
    if entry is not None:
        assert f"entry {entry!r}:" in what, line
    for part in named:
        assert part in what, line
    assert to_do.strip(), f"no 'what to do' after the '; ': {line}"
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------------
# Security


def test_official_hosts_are_https_and_plain_http_hosts_are_rejected_by_the_manifest(dataset):
    """HTTPS is the default for the official hosts: the shipped manifest has only https://
    hosts, and a manifest with an http:// host is refused (plain http only via --mirror)."""
    man = official_manifest()
    assert man.files
    for f in man.files:
        for u in f.urls():
            assert u.startswith("https://"), u
    raw = {"schema": 1, "file": [
        {"name": f.name, "kind": f.kind, "split": f.split, "format": f.format,
         "published_size": f.published_size, "role": f.role or "",
         "rows": f.rows if f.rows is not None else "",
         "images": f.images if f.images is not None else "",
         "hosts": ["http://isic-archive.s3.amazonaws.com/challenges/2020/"]}
        for f in man.files[:1]
    ]}
    raw["file"][0] = {k: v for k, v in raw["file"][0].items() if v != ""}
    with pytest.raises(ManifestError) as ei:
        parse_manifest(raw, "m.toml")
    assert "'hosts'" in ei.value.message and "https://" in ei.value.message
    assert ei.value.exit_code == 2


def test_tls_certificates_are_verified_and_there_is_no_switch_to_turn_it_off():
    """The session verifies, and nothing in the source can turn that off: no ``verify=`` or
    ``.verify =`` other than True, no lowered ``check_hostname``/``verify_mode``, no
    ``CERT_NONE``, no unverified context, however reached (tests/support/source_audit.py;
    its bypasses are tests/harness/test_source_audit.py)."""
    s = make_session()
    assert s.verify is True and s.trust_env is True
    offences = package_offences(SRC, tls_offences)
    assert not offences, [str(o) for o in offences]


@contextlib.contextmanager
def _https_server(tmp_path: Path, root: Path, redirect_to: str | None = None):
    """A TLS static server on 127.0.0.1 serving ``root`` at PREFIX, or answering every request
    with a 301 to ``redirect_to`` + the file name (an https -> http downgrade)."""
    cert, key = self_signed_certificate(tmp_path)
    requests_seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

        def translate_path(self, path: str) -> str:
            return super().translate_path("/" + path[len(PREFIX):] if path.startswith(PREFIX)
                                          else "/nonexistent")

        def _redirect(self) -> bool:
            requests_seen.append(f"{self.command} {self.path}")
            if redirect_to is None:
                return False
            self.send_response(301)
            self.send_header("Location", redirect_to + self.path.rsplit("/", 1)[-1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True

        def do_HEAD(self):
            if not self._redirect():
                super().do_HEAD()

        def do_GET(self):
            if not self._redirect():
                super().do_GET()

    port = free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://127.0.0.1:{port}{PREFIX}", cert, requests_seen
    finally:
        srv.shutdown()
        srv.server_close()


def test_untrusted_tls_certificate_is_refused_never_downgraded(dataset, tmp_path):
    """An https host with a certificate nobody vouches for: exit 3, one line saying TLS
    verification failed, nothing fetched; the same host trusted through the standard
    ``REQUESTS_CA_BUNDLE`` works, so the refusal is verification, not a broken setup."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copyfile(dataset.path(TEST_CSV), root / TEST_CSV)
    data = tmp_path / "d"
    extra = ("--split", "test", "--format", "none", "--json")
    with _https_server(tmp_path, root) as (url, cert, seen):
        r = _fetch(data, url, extra=extra, manifest=dataset.manifest_path)
        assert r.returncode == 3, r.stderr
        assert "TLS certificate verification failed" in _one_error_line(r)
        assert seen == []  # no HTTP request was ever completed over the unverified channel
        assert not (data / "metadata" / TEST_CSV).exists()
        r = _fetch(data, url, extra=extra, manifest=dataset.manifest_path,
                   REQUESTS_CA_BUNDLE=str(cert))
        assert r.returncode == 0, r.stderr
    assert (data / "metadata" / TEST_CSV).read_bytes() == dataset.path(TEST_CSV).read_bytes()


def test_https_host_redirecting_to_plain_http_is_not_followed(dataset, tmp_path):
    """Never a silent downgrade: an https host (trusted certificate) that answers 301 to an
    http:// URL must not make the client fetch over plain http (requests would follow it:
    the session's response hook refuses the downgrade); the run ends with exit 3."""
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as plain, _https_server(
        tmp_path, tmp_path, redirect_to=plain.url
    ) as (url, cert, seen):
        r = _fetch(data, url, extra=("--split", "test", "--format", "none"),
                   manifest=dataset.manifest_path, REQUESTS_CA_BUNDLE=str(cert))
        over_http = [f"{q.method} {q.path} {q.header('Range') or ''}" for q in plain.requests()]
    assert seen, "the https host was never asked"
    # not a HEAD, not a GET aborted after its headers: the plain server was never asked at all
    assert over_http == [], f"requests over plain http after a redirect: {over_http}"
    assert r.returncode == 3, r.stderr
    assert not (data / "metadata" / TEST_CSV).exists()


def test_no_shell_is_ever_invoked_from_the_package_source():
    """No shell and no other program is ever run by the package, so data from a manifest, a
    CSV or a server can never reach a command line: no subprocess, os.system/popen, os.exec*,
    os.spawn*, posix_spawn, pty (nor libc's through ctypes), however imported or looked up
    (tests/support/source_audit.py; its bypasses are tests/harness/test_source_audit.py). The
    package does fork its own workers (extract: os.fork; verify --deep: ProcessPoolExecutor)."""
    offences = package_offences(SRC, process_offences)
    assert not offences, [str(o) for o in offences]


def _world_writable(root: Path, *, files_only: bool = False) -> list[str]:
    return [
        f"{oct(stat.S_IMODE(p.lstat().st_mode))} {p.relative_to(root)}"
        for p in [root, *root.rglob("*")]
        if p.lstat().st_mode & stat.S_IWOTH and not (files_only and not p.is_file())
    ]


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_extracted_images_follow_the_umask_and_are_never_world_writable(
    dataset, mirror, tmp_path, umask
):
    data = tmp_path / "d"
    proc = subprocess.run(
        cli_cmd("fetch", "--data-dir", str(data), "--mirror", mirror.url, "--quiet",
                "--split", "train", "--format", "jpeg"),
        env=cli_env(dataset.manifest_path), capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: os.umask(umask),
    )
    assert proc.returncode == 0, proc.stderr
    images = list((data / "jpeg" / "train").iterdir())
    assert len(images) == len(dataset.train_names)
    for p in images:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
    for p in (data / "archives" / ARCHIVE, data / "metadata" / TEST_CSV.replace(
            "Test_Metadata", "Training_GroundTruth")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p
    assert _world_writable(data) == []


def test_nothing_fetched_is_world_writable_even_under_umask_000(dataset, mirror, tmp_path):
    """Files are never world-writable, even under ``umask 000``: extracted images and the
    downloaded archives and CSVs alike. (Folders are 0o777 & ~umask: the user's choice, not
    checked here.)"""
    data = tmp_path / "d"
    proc = subprocess.run(
        cli_cmd("fetch", "--data-dir", str(data), "--mirror", mirror.url, "--quiet",
                "--split", "train", "--format", "jpeg"),
        env=cli_env(dataset.manifest_path), capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: os.umask(0),
    )
    assert proc.returncode == 0, proc.stderr
    for p in (data / "jpeg" / "train").iterdir():  # what extraction already guarantees
        assert not p.stat().st_mode & stat.S_IWOTH, p
    assert _world_writable(data, files_only=True) == []


def test_names_from_manifest_and_server_cannot_leave_the_data_directory(dataset, tmp_path):
    """Final paths come from validated manifest names only. A manifest name with a path in it
    is refused at load time (zip entries: tests/archive/test_extract.py::test_zip_slip_*). A
    server's names are never used: the mirror redirects to another path, whose answer carries a
    ``Content-Disposition`` filename climbing out of the folder; the file still lands under
    its manifest name in DATA/metadata and nothing else appears anywhere in the test's tree."""
    man = load_manifest(dataset.manifest_path)
    for evil in ("../x.zip", "/etc/passwd", "a/b.zip", ".", "..", "x\\y.zip", "CON:x.zip"):
        files = (dataclasses.replace(man.files[0], name=evil), *man.files[1:])
        p = tmp_path / "evil.toml"
        p.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
        with pytest.raises(ManifestError, match="'name'"):
            load_manifest(p)
    root = tmp_path / "www"
    root.mkdir()
    shutil.copyfile(dataset.path(TEST_CSV), root / "served-as.csv")
    data = tmp_path / "d"
    with FaultServer(root, prefix=PREFIX) as srv:
        srv.add_fault(Status(302, {"Location": f"{PREFIX}sub/../served-as.csv"}), TEST_CSV,
                      times=None)
        srv.add_fault(ExtraHeaders({"Content-Disposition":
                                    'attachment; filename="../../../escaped.csv"'}),
                      "served-as.csv", times=None)
        before = snapshot(tmp_path)
        r = _fetch(data, srv.url, extra=("--split", "test", "--format", "none"),
                   manifest=dataset.manifest_path)
        followed = srv.requests("served-as.csv", "GET")
    assert r.returncode == 0, r.stderr
    assert followed and all(q.status in (200, 206) for q in followed)  # the server's name won
    assert (data / "metadata" / TEST_CSV).read_bytes() == dataset.path(TEST_CSV).read_bytes()
    assert changed(before, snapshot(tmp_path), allowed=(data,)) == []
    landed = [p for p in snapshot(data) if "served-as" in p or "escaped" in p]
    assert landed == []


def test_fetch_report_json_is_valid_and_names_no_outside_path(
    dataset, mirror, tmp_path, tmp_path_factory
):
    """Every path the fetch report names is inside the data directory, and nothing is written
    outside it: not in the whole pytest temporary tree (which holds the served mirror), not in
    $HOME, not in $TMPDIR (fresh ones for the run, with the XDG folders inside $HOME)."""
    data = tmp_path / "d"
    home, tmpdir = tmp_path / "home", tmp_path / "tmpdir"
    home.mkdir()
    tmpdir.mkdir()
    base = tmp_path_factory.getbasetemp()
    before = snapshot(base)
    r = _fetch(data, mirror.url, extra=("--split", "train", "--format", "jpeg", "--json"),
               manifest=dataset.manifest_path, HOME=str(home), TMPDIR=str(tmpdir),
               XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_DATA_HOME=str(home / ".local" / "share"),
               XDG_STATE_HOME=str(home / ".local" / "state"))
    assert r.returncode == 0, r.stderr
    root = str(data.resolve())
    for f in r.json["files"]:
        assert os.path.realpath(f["path"]).startswith(root + os.sep)
    assert changed(before, snapshot(base), allowed=(data,)) == []
    assert list(home.iterdir()) == [] and list(tmpdir.iterdir()) == []
