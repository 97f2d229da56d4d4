"""``isic2020 fetch`` / ``list`` as a user or a CI script runs them: a real process, a real server.

The synthetic dataset (real CSVs, real JPEGs in real zips) is served from 127.0.0.1 at
``/challenges/2020/``, like the official host; the manifest describing it comes through
``$ISIC2020_MANIFEST``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.fixtures import served_dataset
from support.fs import read_only_dir, small_filesystem
from support.interrupt import PATIENT, signal_mid_transfer
from support.servers import (
    FaultServer,
    Hold,
    Throttle,
    free_port,
    range_starts_at_or_after,
    refused_url,
)

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.store.records import read_json

PREFIX = "/challenges/2020/"
ZIP = "ISIC_2020_Training_JPEG.zip"


dataset, mirror = served_dataset("synthetic", n_train=24, n_test=12, formats=("jpeg",))


def _fetch(data: Path, mirror_url: str, *extra: str, env=None, manifest=None):
    return run_cli(
        "fetch", "--data-dir", str(data), "--mirror", mirror_url, *extra,
        env=env or cli_env(manifest),
    )


def test_metadata_only_from_python_http_server(dataset, tmp_path):
    """The issue's acceptance command, against the standard library's plain server."""
    port = free_port()
    served = tmp_path / "www"
    (served / "challenges" / "2020").mkdir(parents=True)
    for f in dataset.metadata_files():
        (served / "challenges" / "2020" / f.name).write_bytes(f.read_bytes())
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=served, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        data = tmp_path / "data"
        r = _fetch(
            data, f"http://127.0.0.1:{port}/challenges/2020", "--split", "all",
            "--format", "none", "--json", manifest=dataset.manifest_path,
        )
    finally:
        server.terminate()
        server.wait()
    assert r.returncode == 0, r.stderr
    doc = r.json
    assert doc["ok"] is True
    names = sorted(f.name for f in dataset.metadata_files())
    assert sorted(f["name"] for f in doc["files"]) == names
    for f in dataset.metadata_files():
        assert (data / "metadata" / f.name).read_bytes() == f.read_bytes()
    for entry in doc["files"]:
        assert entry["etag_check"] == "sha256"  # http.server has no ETag; the manifest pins sha256
        assert entry["bytes_transferred"] == entry["size"]
    assert (data / "CITATION.txt").read_text().count("10.34970/2020-ds01") == 1
    assert "CC BY-NC 4.0" in (data / "LICENSE-DATA.txt").read_text()


def _wait_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def test_fetch_train_jpeg_end_to_end_then_rerun_transfers_nothing(dataset, mirror, tmp_path):
    data = tmp_path / "data"
    r = _fetch(data, mirror.url, "--split", "train", "--format", "jpeg", "--json",
               manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    doc = r.json
    assert doc["verification"]["ok"] is True
    images = sorted(p.stem for p in (data / "jpeg" / "train").iterdir())
    assert images == sorted(dataset.train_names)
    archive = data / "archives" / "ISIC_2020_Training_JPEG.zip"
    assert archive.read_bytes() == dataset.archive("train", "jpeg").read_bytes()
    first = mirror.bytes_sent()
    gets = len(mirror.requests(method="GET"))

    again = _fetch(data, mirror.url, "--split", "train", "--format", "jpeg", "--json",
                   manifest=dataset.manifest_path)
    assert again.returncode == 0, again.stderr
    assert again.json["bytes_transferred"] == 0
    assert {f["status"] for f in again.json["files"]} == {"cached"}
    assert mirror.bytes_sent() == first  # not a byte more left the server
    assert len(mirror.requests(method="GET")) == gets  # trusted from records: no GET at all
    assert [c["name"] for c in again.json["verification"]["checks"]] == ["unchanged"]

    # A re-run that asks no server nothing does not pay for the HTTP stack's import either
    # (requests and urllib3 are a tenth of a second of every such run).
    code = ("import sys\nfrom isic2020.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n    print('exit', e.code, sorted(m for m in "
            "('requests', 'urllib3') if m in sys.modules), file=sys.stderr)\n")
    third = subprocess.run([sys.executable, "-c", code, "fetch", "--data-dir", str(data),
                            "--mirror", mirror.url, "--split", "train", "--format", "jpeg",
                            "--json"], env=cli_env(dataset.manifest_path), capture_output=True,
                           text=True, timeout=120)
    assert third.stderr.strip().splitlines()[-1] == "exit 0 []", third.stderr
    assert len(mirror.requests(method="GET")) == gets


def test_rerun_restores_a_deleted_image_from_the_kept_archive(dataset, mirror, tmp_path):
    data = tmp_path / "data"
    args = ("--split", "train", "--format", "jpeg", "--json")
    assert _fetch(data, mirror.url, *args, manifest=dataset.manifest_path).returncode == 0
    victim = data / "jpeg" / "train" / f"{dataset.train_names[3]}.jpg"
    original = victim.read_bytes()
    victim.unlink()
    sent = mirror.bytes_sent()
    r = _fetch(data, mirror.url, *args, manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == original
    assert mirror.bytes_sent() == sent
    names = [c["name"] for c in r.json["verification"]["checks"]]
    assert "unchanged" not in names and r.json["verification"]["ok"] is True


def test_archive_already_on_disk_is_adopted_after_checking_not_downloaded(
    dataset, mirror, tmp_path
):
    """A zip fetched earlier by other means (wget, a copy) is verified in place, not re-fetched;
    a damaged one is replaced."""
    data = tmp_path / "data"
    zip_name = "ISIC_2020_Training_JPEG.zip"
    (data / "archives").mkdir(parents=True)
    (data / "archives" / zip_name).write_bytes(dataset.path(zip_name).read_bytes())
    args = ("--split", "train", "--format", "jpeg", "--json")
    r = _fetch(data, mirror.url, *args, manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    (entry,) = [f for f in r.json["files"] if f["name"] == zip_name]
    assert entry["status"] == "adopted" and entry["bytes_transferred"] == 0
    assert mirror.bytes_sent(zip_name) == 0

    damaged = bytearray(dataset.path(zip_name).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (data / "archives" / zip_name).write_bytes(bytes(damaged))
    r = _fetch(data, mirror.url, *args, manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    (entry,) = [f for f in r.json["files"] if f["name"] == zip_name]
    assert entry["status"] == "downloaded"
    assert (data / "archives" / zip_name).read_bytes() == dataset.path(zip_name).read_bytes()


def test_fetch_repairs_a_damaged_image_and_reports_a_stray_one_as_exit_1(
    dataset, mirror, tmp_path
):
    """An image replaced by garbage under the same name is restored from the remote zip's
    byte ranges (issue 13: repair); a stray image is caught by the final verify (exit 1)."""
    data = tmp_path / "data"
    args = ("--split", "train", "--format", "jpeg", "--no-keep-archives")
    assert _fetch(data, mirror.url, *args, manifest=dataset.manifest_path).returncode == 0
    victim = data / "jpeg" / "train" / f"{dataset.train_names[0]}.jpg"
    victim.unlink()
    victim.write_bytes(b"not a jpeg")
    (data / "jpeg" / "train" / "ISIC_9999999.jpg").write_bytes(b"\xff\xd8junk\xff\xd9")
    r = _fetch(data, mirror.url, *args, manifest=dataset.manifest_path)
    assert r.returncode == 1, r.stderr
    assert "ISIC_9999999" in r.stdout
    assert victim.read_bytes()[:2] == b"\xff\xd8" and victim.stat().st_size > 100


def test_no_keep_archives_deletes_the_zip_and_a_rerun_still_costs_nothing(
    dataset, mirror, tmp_path
):
    data = tmp_path / "data"
    args = ("--split", "test", "--format", "jpeg", "--no-keep-archives", "--json")
    r = _fetch(data, mirror.url, *args, manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    assert not (data / "archives" / "ISIC_2020_Test_JPEG.zip").exists()
    assert len(list((data / "jpeg" / "test").iterdir())) == len(dataset.test_names)
    sent = mirror.bytes_sent()
    again = _fetch(data, mirror.url, *args, manifest=dataset.manifest_path)
    assert again.returncode == 0, again.stderr
    assert again.json["bytes_transferred"] == 0
    assert mirror.bytes_sent() == sent


def test_json_report_has_the_documented_fields(dataset, mirror, tmp_path):
    r = _fetch(tmp_path / "d", mirror.url, "--format", "none", "--split", "test", "--json",
               manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    (entry,) = r.json["files"]
    for key in ("url", "size", "bytes_transferred", "etag", "sha256", "seconds", "retries",
                "status", "etag_check"):
        assert key in entry
    assert entry["etag_check"] == "md5"
    assert entry["etag"] == hashlib.md5(dataset.path(entry["name"]).read_bytes()).hexdigest()


def test_mirrors_from_the_environment_are_used_in_order(dataset, mirror, tmp_path):
    env = cli_env(dataset.manifest_path, ISIC2020_MIRROR=f"{refused_url()} {mirror.url}")
    r = run_cli("fetch", "--data-dir", str(tmp_path / "d"), "--format", "none", "--split",
                "test", "--json", env=env)
    assert r.returncode == 0, r.stderr
    (entry,) = r.json["files"]
    assert entry["url"].startswith(mirror.url) and len(entry["failed_hosts"]) == 1


def test_list_shows_urls_and_local_state(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    env = cli_env(dataset.manifest_path)
    before = run_cli("list", "--data-dir", str(data), "--json", env=env)
    assert before.returncode == 0, before.stderr
    states = {f["name"]: f["state"] for f in before.json["files"]}
    assert set(states.values()) == {"missing"}
    official = run_cli("list", "--json", "--data-dir", str(data), env=cli_env())
    urls = official.json["files"][0]["urls"]
    assert urls[0].startswith("https://isic-archive.s3.amazonaws.com/challenges/2020/")
    assert urls[1].startswith("https://isic-challenge-data.s3.amazonaws.com/2020/")
    assert _fetch(data, mirror.url, "--format", "none", "--split", "test",
                  manifest=dataset.manifest_path).returncode == 0
    after = run_cli("list", "--data-dir", str(data), "--json", env=env)
    states = {f["name"]: f["state"] for f in after.json["files"]}
    assert states["ISIC_2020_Test_Metadata.csv"] == "verified"


def test_dry_run_writes_nothing_and_reports_the_need(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    r = _fetch(data, mirror.url, "--split", "train", "--format", "jpeg", "--dry-run", "--json",
               manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    rows = r.json["dry_run"]
    size = dataset.archive("train", "jpeg").stat().st_size
    (zrow,) = [x for x in rows if x["name"] == "ISIC_2020_Training_JPEG.zip"]
    assert zrow["to_transfer"] == size
    assert zrow["disk_needed"] >= size
    assert not data.exists()
    assert mirror.bytes_sent() == 0


# --------------------------------------------------------------------------------------------
# Errors: one line, documented exit code, nothing lost


@pytest.mark.parametrize(
    "args",
    [
        ("fetch", "--split", "validation"),
        ("fetch", "--format", "png"),
        ("fetch", "--connections", "0"),
        ("fetch", "--mirror", "ftp://example.invalid/x"),
        ("fetch", "--bogus"),
        ("frobnicate",),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, tmp_path):
    r = run_cli(*args, "--data-dir", str(tmp_path / "d")) if args[0] == "fetch" else run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("isic2020: error"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()


def test_broken_manifest_names_file_entry_and_field(dataset, tmp_path):
    text = dataset.manifest_path.read_text().replace('format = "jpeg"', 'format = "jpg"', 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    r = run_cli("fetch", "--data-dir", str(tmp_path / "d"), env=cli_env(bad))
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    what, _, to_do = line.partition("; ")
    assert str(bad) in what and "entry 'ISIC_2020_Training_JPEG.zip'" in what
    assert "field 'format'" in what and "'jpg'" in what and to_do.strip(), line


def test_unreachable_host_exits_3_with_one_line_and_no_partial_at_final_path(dataset, tmp_path):
    data = tmp_path / "d"
    r = _fetch(data, refused_url().rstrip("/"), "--format", "none", "--split", "test",
               manifest=dataset.manifest_path)
    assert r.returncode == 3, r.stderr
    assert len(r.error_lines) == 1 and "connection refused" in r.error_lines[0]
    assert "Traceback" not in r.stderr
    assert not (data / "metadata" / "ISIC_2020_Test_Metadata.csv").exists()


def test_file_size_limit_mid_download_exits_3_then_resumes(dataset, tmp_path):
    """RLIMIT_FSIZE biting while bytes are arriving: exit 3, one line naming the limit, the
    chunks written below the limit kept; without the limit the same command resumes.

    A fresh partial file is preallocated to its full size, so there a limit bites before any
    byte of the file moves. Mid-transfer it bites on a partial file that is already full size
    (a run killed once its transfer had started): the writes below the limit succeed, the
    first past it fails with EFBIG."""
    root, manifest, blob = _big_archive_setup(dataset, tmp_path, size_mib=8)
    data = tmp_path / "d"
    env = cli_env(manifest, ISIC2020_CHUNK_SIZE=str(256 * 1024))
    args = cli_cmd("fetch", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
                   "--no-extract", "--connections", "4", "--json")
    limit = len(blob) // 2

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with FaultServer(root, prefix=PREFIX) as srv:
        args += ["--mirror", srv.url]
        throttle = srv.throttle(1_000_000, ZIP)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            _wait_for(lambda: _done_bytes(data) > 0, proc, "a finished chunk")
        finally:
            proc.kill()
            proc.wait(timeout=30)
        done_killed = _done_bytes(data)
        assert 0 < done_killed < limit
        srv.remove_fault(throttle)
        served = srv.bytes_sent(ZIP)

        limited = subprocess.run(args, env=env, capture_output=True, text=True,
                                 preexec_fn=small_files, timeout=120)
        assert limited.returncode == 3, limited.stderr
        errors = [ln for ln in limited.stderr.splitlines() if ln.startswith("isic2020: error")]
        assert len(errors) == 1 and "file size limit" in errors[0], limited.stderr
        assert "Traceback" not in limited.stderr
        assert srv.bytes_sent(ZIP) > served, "the limit bit before any byte moved"
        done_limited = _done_bytes(data)
        assert done_killed < done_limited <= limit  # what was written below the limit is kept
        assert not (data / "archives" / ZIP).exists()
        served = srv.bytes_sent(ZIP)

        r = run_cli(*args[3:], env=env)
        assert r.returncode == 0, r.stderr
        resumed = srv.bytes_sent(ZIP) - served
    (entry,) = [f for f in r.json["files"] if f["name"] == ZIP]
    assert entry["status"] == "resumed"
    assert resumed == entry["bytes_transferred"] == len(blob) - done_limited
    assert (data / "archives" / ZIP).read_bytes() == blob


def test_read_only_data_dir_exits_3_with_one_line(dataset, mirror, tmp_path):
    with read_only_dir(tmp_path / "ro") as data:
        r = _fetch(data, mirror.url, "--format", "none", manifest=dataset.manifest_path)
    assert r.returncode == 3, r.stderr
    assert len(r.error_lines) == 1 and "writable" in r.error_lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_disk_full_during_download_exits_3_then_resumes_after_space_is_freed(
    dataset, tmp_path
):
    """The disk fills while the archive downloads (another writer takes the last free bytes
    once the partial file is preallocated and chunks have arrived): exit 3, one line naming
    the full disk, nothing at the final path; once space is freed the same command resumes
    and fetches only what was missing."""
    root, manifest, blob = _big_archive_setup(dataset, tmp_path, size_mib=8)
    env = cli_env(manifest, ISIC2020_CHUNK_SIZE=str(256 * 1024))
    with small_filesystem(tmp_path / "small", 64 << 20) as fs, FaultServer(
        root, prefix=PREFIX
    ) as srv:
        data = fs / "data"
        args = cli_cmd("fetch", "--data-dir", str(data), "--mirror", srv.url, "--split",
                       "train", "--format", "jpeg", "--no-extract", "--connections", "4",
                       "--json")
        throttle = srv.throttle(500_000, ZIP)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        filler = fs / "filler"
        try:
            _wait_for(lambda: _done_bytes(data) > 0, proc, "a finished chunk")
            _fill(filler)
            _out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == 3, err
        errors = [ln for ln in err.splitlines() if ln.startswith("isic2020: error")]
        assert len(errors) == 1 and "disk is full" in errors[0], err
        assert "Traceback" not in err
        assert not (data / "archives" / ZIP).exists()
        done = _done_bytes(data)
        assert 0 < done < len(blob)
        srv.remove_fault(throttle)
        served = srv.bytes_sent(ZIP)
        filler.unlink()  # the user frees space
        r = run_cli(*args[3:], env=env)
        assert r.returncode == 0, r.stderr
        resumed = srv.bytes_sent(ZIP) - served
        assert (data / "archives" / ZIP).read_bytes() == blob
    (entry,) = [f for f in r.json["files"] if f["name"] == ZIP]
    assert entry["status"] == "resumed"
    assert resumed == entry["bytes_transferred"] == len(blob) - done


def _fill(path: Path) -> None:
    """Write ``path`` until its filesystem has not one byte left (ENOSPC)."""
    block = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as fh:
        while block:
            try:
                fh.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                block = block[: len(block) // 2]


def _done_bytes(data: Path, name: str = "ISIC_2020_Training_JPEG.zip") -> int:
    """Bytes the partial state of ``name`` records as finished (0: no state yet)."""
    doc = read_json(data / ".isic2020" / "partial" / f"{name}.state.json")
    try:
        return sum(int(b) - int(a) for a, b in doc["done"])
    except (TypeError, KeyError, ValueError):
        return 0


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Until ``cond()`` holds while ``proc`` still runs (fails if it ends or never holds)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the fetch ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.005)


# --------------------------------------------------------------------------------------------
# Kills, Ctrl-C, and two runs at once: a big, throttled archive


def _big_archive_setup(dataset, tmp_path: Path, size_mib: int = 24):
    """A mirror whose training 'archive' is ``size_mib`` MiB of random bytes (fetched with
    --no-extract), and a manifest that pins its exact size and sha256."""
    root = tmp_path / "bigmirror"
    root.mkdir()
    blob = os.urandom(size_mib << 20)
    man = load_manifest(dataset.manifest_path)
    files = []
    for f in man.files:
        if f.name == "ISIC_2020_Training_JPEG.zip":
            (root / f.name).write_bytes(blob)
            f = dataclasses.replace(f, size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
        else:
            (root / f.name).write_bytes(dataset.path(f.name).read_bytes())
        files.append(f)
    path = tmp_path / "big.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=tuple(files))))
    return root, path, blob


@pytest.mark.slow
def test_sigkill_twenty_times_then_final_run_is_exact_and_resumed(dataset, tmp_path):
    """kill -9 twenty times, each time once the recorded partial state has grown (so every
    kill lands mid-transfer, never in start-up), then a final run: the exact file,
    ``status: resumed``, and the server sent at most the file plus what can be in flight at
    a kill (one chunk per connection): an engine that restarted from zero would send each
    finished prefix again (and could not grow the state past its previous size in time)."""
    root, manifest, blob = _big_archive_setup(dataset, tmp_path, size_mib=24)
    data = tmp_path / "d"
    chunk, connections = 128 * 1024, 4
    env = cli_env(manifest, ISIC2020_CHUNK_SIZE=str(chunk))
    args = cli_cmd("fetch", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
                   "--no-extract", "--connections", str(connections), "--quiet")
    with FaultServer(root, prefix=PREFIX) as srv:
        srv.add_fault(Throttle(bytes_per_second=400_000), None, times=None)
        args += ["--mirror", srv.url]
        kills = 0
        done = 0
        while kills < 20:
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                _wait_for(lambda before=done: _done_bytes(data) > before, proc,
                          "more chunks finished")
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
            kills += 1
            done = _done_bytes(data)
            assert done < len(blob), "the download finished before it was killed 20 times"
        srv.clear_faults()
        final = subprocess.run([*args, "--json"], env=env, capture_output=True, text=True,
                               timeout=120)
        served = srv.bytes_sent(ZIP)
    assert final.returncode == 0, final.stderr
    out = data / "archives" / ZIP
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(blob).hexdigest()
    (entry,) = [f for f in __import__("json").loads(final.stdout)["files"] if f["name"] == ZIP]
    assert entry["status"] == "resumed"
    assert entry["bytes_transferred"] == len(blob) - done
    in_flight = kills * connections * chunk
    assert served <= len(blob) + in_flight, f"{served} bytes served for a {len(blob)}-byte file"
    assert not list((data / ".isic2020" / "partial").iterdir())


def test_sigint_leaves_resumable_state_and_one_line(dataset, tmp_path):
    root, manifest, blob = _big_archive_setup(dataset, tmp_path, size_mib=8)
    data = tmp_path / "d"
    env = cli_env(manifest, ISIC2020_CHUNK_SIZE=str(256 * 1024), **PATIENT)
    with FaultServer(root, prefix=PREFIX) as srv:
        srv.add_fault(Throttle(bytes_per_second=1_000_000), None, times=None)
        # The ranges from 1 MiB on wait until the signal is sent: the fetch cannot end before
        # it, however late a loaded machine runs this test.
        hold = Hold()
        srv.add_fault(hold, "ISIC_2020_Training_JPEG.zip", times=None,
                      when=range_starts_at_or_after(1024 * 1024))
        args = cli_cmd("fetch", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
                       "--no-extract", "--mirror", srv.url, "--connections", "2")
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        # Interrupt mid-transfer, not at start-up: once the archive's state is on disk and
        # a chunk's worth of it has left the server.
        state = data / ".isic2020" / "partial" / "ISIC_2020_Training_JPEG.zip.state.json"
        deadline = time.monotonic() + 60
        while not (state.exists() and srv.bytes_sent("ISIC_2020_Training_JPEG.zip", settle=0)
                   >= 256 * 1024) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        signal_mid_transfer(proc, signal.SIGINT, hold)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        lines = [ln for ln in err.splitlines() if ln.startswith("isic2020:")]
        assert lines[-1].startswith("isic2020: interrupted") and "resume" in lines[-1]
        assert sum(ln.startswith("isic2020: interrupted") for ln in err.splitlines()) == 1, err
        assert not [ln for ln in lines if ln.startswith("isic2020: error")], err
        assert "Traceback" not in err
        partial = data / ".isic2020" / "partial"
        assert (partial / "ISIC_2020_Training_JPEG.zip.state.json").exists()
        assert not (data / "archives" / "ISIC_2020_Training_JPEG.zip").exists()
        srv.clear_faults()
        r = run_cli(*args[3:], env=env, timeout=60)
        assert r.returncode == 0, r.stderr
    out_file = data / "archives" / "ISIC_2020_Training_JPEG.zip"
    assert out_file.read_bytes() == blob


def test_two_fetches_at_once_on_one_data_dir(dataset, tmp_path):
    root, manifest, blob = _big_archive_setup(dataset, tmp_path, size_mib=4)
    data = tmp_path / "d"
    env = cli_env(manifest)
    with FaultServer(root, prefix=PREFIX) as srv:
        # ~2 s of download (2 connections at 1 MB/s), so the second run surely meets the first.
        srv.add_fault(Throttle(bytes_per_second=1_000_000), None, times=None)
        args = cli_cmd("fetch", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
                       "--no-extract", "--mirror", srv.url, "--json", "--connections", "2")
        a = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        # the second starts once the first holds the lock and is transferring the archive
        deadline = time.monotonic() + 60
        while not srv.bytes_sent("ISIC_2020_Training_JPEG.zip", settle=0) and a.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.poll() is None, "the first fetch ended before the second started"
        b = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        out_a, err_a = a.communicate(timeout=120)
        out_b, err_b = b.communicate(timeout=120)
        served = srv.bytes_sent("ISIC_2020_Training_JPEG.zip")
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    assert "waiting for another isic2020" in err_b
    import json

    assert json.loads(out_b)["bytes_transferred"] == 0  # the second found the work done
    assert (data / "archives" / "ISIC_2020_Training_JPEG.zip").read_bytes() == blob
    assert served == len(blob)
