"""What proves the bytes, as a user of ``isic2020 fetch`` sees it (issue 11, parts A, C1, F).

Exit 0 only with bytes a content hash proved (an MD5 ETag; a multipart ETag with a part size
the server stated or one that reproduces it; the manifest's sha256), or "unverifiable" where the
server offers no content hash at all. A hash that does not match is repaired in the same run
from a second copy; content that cannot be the file (a login page, a gzipped body) never lands
and never stays trusted. Every test runs the real CLI against a real FaultServer on 127.0.0.1,
with a manifest like the shipped one (sizes and checksums empty) unless it says otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.interrupt import PATIENT
from support.servers import (
    CaptivePortal,
    FaultServer,
    FlipByte,
    GzipBody,
    Hold,
    IgnoreRange,
    NoPartNumber,
    PartSizeClaim,
    RewriteEtag,
    multipart_etag_of,
)

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.store.records import FileRecord, Records, read_json
from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
ARCHIVE = "ISIC_2020_Training_JPEG.zip"
MiB = 1 << 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("synthetic"), n_train=24, n_test=12,
                         formats=("jpeg",))


def _zip_blob(size: int, seed: int = 0) -> bytes:
    """A real (stored) zip of about ``size`` bytes of random data: plausible as the archive."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("train/blob.bin", random.Random(seed).randbytes(size - 200))
    return buf.getvalue()


def _human(n: int) -> str:
    return f"{n / 10**6:.1f} MB" if n >= 10**6 else f"{max(1, n // 1000)} KB"


def _mirror(dataset, tmp_path: Path, blob: bytes | None = None, *, pin: bool = False):
    """A mirror folder (the CSVs, and the training archive or ``blob``) and a manifest like the
    shipped one: no size, ETag or sha256 (``pin``: the archive's size and sha256 pinned)."""
    root = tmp_path / "mirror"
    root.mkdir()
    man = load_manifest(dataset.manifest_path)
    files = []
    for f in man.files:
        if f.kind != "metadata" and f.name != ARCHIVE:
            continue
        ours = f.name == ARCHIVE and blob is not None
        data = blob if ours else dataset.path(f.name).read_bytes()
        (root / f.name).write_bytes(data)
        pinned = pin and f.name == ARCHIVE
        files.append(dataclasses.replace(
            f, published_size=_human(len(data)), etag=None,
            size=len(data) if pinned else None,
            sha256=hashlib.sha256(data).hexdigest() if pinned else None,
        ))
    path = tmp_path / "manifest.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=tuple(files))))
    return root, path


def _fetch(data: Path, manifest: Path, *mirrors: str, extra: tuple[str, ...] = (),
           **env: str):
    args = ["fetch", "--data-dir", str(data), "--json", "--quiet", "--connections", "4"]
    for m in mirrors:
        args += ["--mirror", m]
    return run_cli(*args, *extra, env=cli_env(manifest, ISIC2020_CHUNK_SIZE=str(MiB), **env),
                   timeout=180)


NO_EXTRACT = ("--split", "train", "--format", "jpeg", "--no-extract")


def _entry(doc: dict, name: str = ARCHIVE) -> dict:
    return next(f for f in doc["files"] if f["name"] == name)


def _nothing_landed(data: Path, name: str = ARCHIVE) -> None:
    assert not (data / "archives" / name).exists()
    assert not list((data / ".isic2020" / "partial").glob(name + "*"))


# --------------------------------------------------------------------------------------------
# A1 + repair: a flipped byte is found and fixed in the same run, whatever proves the bytes


@pytest.mark.parametrize(
    ("etag", "answers_part_number", "flips", "plain"),
    [
        ("multipart", False, 1, False),  # a mirror that copied S3's ETags: part size derived
        ("multipart", True, 1, False),  # S3 itself: the part size is stated
        ("md5", True, 1, False),
        ("multipart", True, 2, False),  # two bodies damaged: two chunks to tell apart
        ("md5", True, 1, True),  # a server that ignores ranges: two plain streams
        ("multipart", False, 1, True),
    ],
)
def test_a_flipped_byte_is_repaired_from_a_second_copy_in_the_same_run(
    dataset, tmp_path, etag, answers_part_number, flips, plain
):
    blob = _zip_blob(12 * MiB, seed=1)
    root, manifest = _mirror(dataset, tmp_path, blob)
    with FaultServer(root, prefix=PREFIX, etag=etag, part_size=5 * MiB) as srv:
        if not answers_part_number:
            srv.add_fault(NoPartNumber(), ARCHIVE, times=None)
        if plain:
            srv.add_fault(IgnoreRange(), ARCHIVE, times=None)
        fault = FlipByte(offset=len(blob) // 2) if flips == 1 else FlipByte()
        srv.add_fault(fault, ARCHIVE, times=flips, when=lambda q: not plain or not q.ranged)
        r = _fetch(tmp_path / "d", manifest, srv.url, extra=NO_EXTRACT)
        served = srv.bytes_sent(ARCHIVE)
        if plain:  # not counting the ranged GETs that found out ranges are ignored
            served = sum(q.bytes_sent for q in srv.requests(ARCHIVE, "GET")
                         if not q.header("Range"))
        assert not any(rule.fault is fault for rule in srv.faults())  # the flips happened
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d" / "archives" / ARCHIVE).read_bytes() == blob
    entry = _entry(r.json)
    assert entry["etag_check"].startswith(etag), entry["etag_check"]
    assert entry["repaired"], entry  # the JSON says which bytes came from the second copy
    assert served <= 2.2 * len(blob), served  # one more pass at most


def test_a_repair_keeps_memory_flat_whatever_the_file_size(dataset, tmp_path):
    """The two copies are compared by per-chunk digests, on disk: repairing a 96 MiB archive
    peaks below the archive's own size (a copy in RAM could not)."""
    blob = _zip_blob(96 * MiB, seed=10)
    root, manifest = _mirror(dataset, tmp_path, blob)
    with FaultServer(root, prefix=PREFIX) as srv:
        srv.add_fault(FlipByte(offset=len(blob) - 12345), ARCHIVE, times=1)
        args = cli_cmd("fetch", "--data-dir", str(tmp_path / "d"), "--mirror", srv.url,
                       "--json", "--quiet", *NO_EXTRACT)
        code, out, err, rss = _run_measured(args, cli_env(manifest), tmp_path)
    assert code == 0, err
    assert _entry(json.loads(out))["repaired"]
    assert rss < len(blob), rss
    assert (tmp_path / "d" / "archives" / ARCHIVE).read_bytes() == blob


def test_an_interrupted_repair_is_resumed_by_the_next_run(dataset, tmp_path):
    """SIGTERM while the second copy downloads: exit 130, the first copy and the part of the
    second that arrived are kept; the same command finishes the second copy, repairs, lands
    the exact archive, and the whole costs two passes: the next run fetches exactly what the
    second copy lacks, not a byte of the first copy again."""
    blob = _zip_blob(12 * MiB, seed=11)
    root, manifest = _mirror(dataset, tmp_path, blob)
    data = tmp_path / "d"
    env = cli_env(manifest, ISIC2020_CHUNK_SIZE=str(256 * 1024), **PATIENT)
    connections = 4
    args = cli_cmd("fetch", "--data-dir", str(data), "--mirror", "", "--json", "--quiet",
                   "--connections", str(connections), *NO_EXTRACT)
    second = data / ".isic2020" / "partial" / (ARCHIVE + ".part.repair.state.json")
    # The second copy asks again for ranges the first one had: the first `connections` of
    # those pass, every later one is held until SIGTERM is sent. So the second copy cannot
    # end before the signal, however late a loaded machine runs this test (a signal after it
    # ended found nothing to resume); and once each connection waits on the hold no byte is
    # in flight (every piece sent was read whole): the state claims exactly what was served.
    asked: set[tuple[int, int]] = set()
    again_asked: list[int] = []

    def second_copy_beyond_first_pieces(req) -> bool:
        if (req.start, req.end) not in asked:
            asked.add((req.start, req.end))
            return False
        again_asked.append(req.start)
        return len(again_asked) > connections

    hold = Hold(then="drop")
    with FaultServer(root, prefix=PREFIX) as srv:
        args[args.index("--mirror") + 1] = srv.url
        srv.add_fault(FlipByte(offset=len(blob) // 2), ARCHIVE, times=1)
        srv.throttle(1_000_000, ARCHIVE)  # two copies: about 3 s each over 4 connections
        srv.add_fault(hold, ARCHIVE, times=None, when=second_copy_beyond_first_pieces)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert hold.wait_held(connections), "the second copy never reached the hold"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            hold.release()
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        doc = read_json(second)  # the second copy's progress is kept
        assert isinstance(doc, dict), doc
        kept = sum(b - a for a, b in doc["done"])
        assert 0 < kept < len(blob), kept
        assert not (data / "archives" / ARCHIVE).exists()
        assert srv.bytes_sent(ARCHIVE) == len(blob) + kept  # one copy, and what was kept
        srv.clear_faults()
        srv.reset_counters()
        again = run_cli(*args[3:], env=env, timeout=120)
        served = srv.bytes_sent(ARCHIVE)
    assert again.returncode == 0, again.stderr
    assert (data / "archives" / ARCHIVE).read_bytes() == blob
    assert _entry(again.json)["repaired"]
    assert served == len(blob) - kept, (served, kept)  # the rest of the second copy only
    assert not list((data / ".isic2020" / "partial").glob(ARCHIVE + "*"))


def test_a_damaged_second_copy_kept_by_a_killed_run_is_not_trusted_by_the_next(
    dataset, tmp_path
):
    """Every body damaged at the same byte; SIGKILL once the second copy's state claims that
    byte (so the damaged second copy is kept, checkpointed, same ETag). The next run, with the
    server healthy again, resumes both copies: they agree on the damaged byte, no combination
    matches. Bytes kept from an earlier run were never proven by a hash, so that second copy
    is thrown away and fetched once more: exit 0 and the exact archive (it used to fail with
    "a second copy is identical", and every later run the same, until files were deleted)."""
    blob = _zip_blob(4 * MiB, seed=12)
    root, manifest = _mirror(dataset, tmp_path, blob)
    data = tmp_path / "d"
    env = cli_env(manifest, ISIC2020_CHUNK_SIZE=str(256 * 1024))
    args = cli_cmd("fetch", "--data-dir", str(data), "--mirror", "", "--json", "--quiet",
                   "--connections", "1", *NO_EXTRACT)
    second = data / ".isic2020" / "partial" / (ARCHIVE + ".part.repair.state.json")
    flip = 1000
    with FaultServer(root, prefix=PREFIX) as srv:
        args[args.index("--mirror") + 1] = srv.url
        srv.add_fault(FlipByte(offset=flip), ARCHIVE, times=None)
        srv.throttle(1_000_000, ARCHIVE)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                doc = read_json(second)
                if isinstance(doc, dict) and any(a <= flip < b for a, b in doc.get("done", [])):
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert any(a <= flip < b for a, b in read_json(second)["done"])  # kept, checkpointed
        assert not (data / "archives" / ARCHIVE).exists()
        srv.clear_faults()
        again = run_cli(*args[3:], env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (data / "archives" / ARCHIVE).read_bytes() == blob
    assert _entry(again.json)["repaired"]
    assert not list((data / ".isic2020" / "partial").glob(ARCHIVE + "*"))


def test_damage_in_every_copy_is_exit_1_with_nothing_landed_and_the_next_run_heals(
    dataset, tmp_path
):
    """The same byte flipped in every body, part size not stated: no combination of the two
    copies reproduces the ETag. Exit 1, one line naming the check, nothing at the final path
    (today the guess made it 'unverifiable' and the damaged archive landed with exit 0)."""
    blob = _zip_blob(12 * MiB, seed=2)
    root, manifest = _mirror(dataset, tmp_path, blob)
    data = tmp_path / "d"
    with FaultServer(root, prefix=PREFIX, etag="multipart", part_size=5 * MiB) as srv:
        srv.add_fault(NoPartNumber(), ARCHIVE, times=None)
        srv.add_fault(FlipByte(offset=len(blob) // 3), ARCHIVE, times=None)
        r = _fetch(data, manifest, srv.url, extra=NO_EXTRACT)
        assert r.returncode == 1, r.stderr
        assert len(r.error_lines) == 1, r.stderr
        assert "multipart ETag" in r.error_lines[0] and ARCHIVE in r.error_lines[0]
        assert "Traceback" not in r.stderr
        _nothing_landed(data)
        assert srv.bytes_sent(ARCHIVE) <= 2.2 * len(blob)
        srv.clear_faults()
        srv.add_fault(NoPartNumber(), ARCHIVE, times=None)
        again = _fetch(data, manifest, srv.url, extra=NO_EXTRACT)
    assert again.returncode == 0, again.stderr
    assert (data / "archives" / ARCHIVE).read_bytes() == blob


def test_a_multipart_etag_no_part_size_reproduces_is_a_mismatch_not_unverifiable(
    dataset, tmp_path
):
    """Parts of 6.5 MiB (no tool's size, not a MiB multiple) and no ``?partNumber=``: the
    sizes that fit (5, 6 MiB) do not reproduce the ETag, so nothing proves the bytes: exit 1,
    nothing lands. Today: 'unverifiable', exit 0."""
    blob = _zip_blob(20 * MiB, seed=3)
    root, manifest = _mirror(dataset, tmp_path, blob)
    data = tmp_path / "d"
    with FaultServer(root, prefix=PREFIX, etag="multipart", part_size=13 * MiB // 2) as srv:
        srv.add_fault(NoPartNumber(), ARCHIVE, times=None)
        assert srv.etag_for(ARCHIVE).endswith('-4"')
        r = _fetch(data, manifest, srv.url, extra=NO_EXTRACT)
    assert r.returncode == 1, r.stderr
    assert len(r.error_lines) == 1 and "part size" in r.error_lines[0], r.stderr
    _nothing_landed(data)


def test_a_derived_part_size_that_reproduces_the_etag_proves_the_bytes(dataset, tmp_path):
    """Parts of 6 MiB (a MiB multiple no tool uses by default) and no ``?partNumber=``: the
    derived candidate reproduces the ETag, so the bytes are proven (not 'unverifiable')."""
    blob = _zip_blob(20 * MiB, seed=4)
    root, manifest = _mirror(dataset, tmp_path, blob)
    with FaultServer(root, prefix=PREFIX, etag="multipart", part_size=6 * MiB) as srv:
        srv.add_fault(NoPartNumber(), ARCHIVE, times=None)
        r = _fetch(tmp_path / "d", manifest, srv.url, extra=NO_EXTRACT)
        served = srv.bytes_sent(ARCHIVE)
    assert r.returncode == 0, r.stderr
    entry = _entry(r.json)
    assert entry["etag_check"].startswith("multipart"), entry["etag_check"]
    assert str(6 * MiB) in entry["etag_check"]
    assert served == len(blob)  # found by hashing what is on disk, not by downloading again
    assert (tmp_path / "d" / "archives" / ARCHIVE).read_bytes() == blob


# --------------------------------------------------------------------------------------------
# A2: one plain stream (ranges ignored) with a stated part size


def test_plain_stream_checks_a_multipart_etag_from_its_parts(dataset, tmp_path):
    blob = _zip_blob(11 * MiB, seed=5)
    root, manifest = _mirror(dataset, tmp_path, blob)
    with FaultServer(root, prefix=PREFIX, etag="multipart", part_size=5 * MiB) as srv:
        srv.add_fault(IgnoreRange(), None, times=None)
        r = _fetch(tmp_path / "d", manifest, srv.url, extra=NO_EXTRACT)
    assert r.returncode == 0, r.stderr
    entry = _entry(r.json)
    assert entry["etag_check"] == "multipart"
    assert entry["etag"] == multipart_etag_of(blob, 5 * MiB)
    assert (tmp_path / "d" / "archives" / ARCHIVE).read_bytes() == blob


# --------------------------------------------------------------------------------------------
# C1: what a server claims about parts cannot cost memory


_MEASURE = """\
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as fh:
    fh.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def _run_measured(args: list[str], env: dict[str, str], tmp_path: Path, timeout: float = 180):
    """Run the CLI; (returncode, stdout, stderr, its peak RSS in bytes).

    Measured by a small Python parent: Linux carries a process's peak RSS across fork and
    exec, so the CLI forked straight from pytest would be charged pytest's own memory."""
    rss_file = tmp_path / "rss.txt"
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(rss_file), *args], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr, int(rss_file.read_text()) * 1024


def test_an_absurd_part_count_is_no_content_hash_and_memory_stays_bounded(dataset, tmp_path):
    """``HEAD ?partNumber=1`` says ``Content-Length: 1`` and the ETag claims one part per
    byte: that is no S3 multipart ETag (at most 10,000 parts). Today the engine kept a digest
    per byte (3.9 GB RSS for 23 MB); now the ETag counts as no content hash."""
    blob = _zip_blob(4 * MiB, seed=6)
    root, manifest = _mirror(dataset, tmp_path, blob)
    claim = f'"{hashlib.md5(blob).hexdigest()}-{len(blob)}"'
    with FaultServer(root, prefix=PREFIX, etag="md5") as srv:
        srv.add_fault(RewriteEtag("value", claim), ARCHIVE, times=None)
        srv.add_fault(PartSizeClaim(length=1), ARCHIVE, times=None)
        args = cli_cmd("fetch", "--data-dir", str(tmp_path / "d"), "--mirror", srv.url,
                       "--json", "--quiet", *NO_EXTRACT)
        code, out, err, rss = _run_measured(args, cli_env(manifest), tmp_path)
    assert rss < 400 * MiB, rss
    assert code == 0, err
    entry = _entry(json.loads(out))
    assert entry["etag_check"].startswith("unverifiable"), entry["etag_check"]
    assert (tmp_path / "d" / "archives" / ARCHIVE).read_bytes() == blob


# --------------------------------------------------------------------------------------------
# F: validators are sent as received; a weak ETag is never put in If-Match


def test_a_weak_etag_pins_ranges_with_if_unmodified_since_and_says_so(dataset, tmp_path):
    root, manifest = _mirror(dataset, tmp_path, _zip_blob(3 * MiB, seed=7), pin=True)
    with FaultServer(root, prefix=PREFIX) as srv:
        srv.add_fault(RewriteEtag("weak"), None, times=None)
        r = _fetch(tmp_path / "d", manifest, srv.url, extra=NO_EXTRACT)
        gets = [q for q in srv.requests(ARCHIVE, "GET") if q.header("Range")]
    assert r.returncode == 0, r.stderr
    assert gets and all(q.header("If-Match") is None for q in gets)
    assert all(q.header("If-Unmodified-Since") for q in gets)
    check = _entry(r.json)["etag_check"]
    assert check.startswith("unverifiable") and "sha256 matches" in check, check
    assert "weak ETag" in check and "If-Unmodified-Since" in check, check


def test_an_unquoted_etag_is_sent_back_exactly_as_received(dataset, tmp_path):
    blob = _zip_blob(3 * MiB, seed=8)
    root, manifest = _mirror(dataset, tmp_path, blob)
    with FaultServer(root, prefix=PREFIX) as srv:
        srv.add_fault(RewriteEtag("unquoted"), None, times=None)
        r = _fetch(tmp_path / "d", manifest, srv.url, extra=NO_EXTRACT)
        gets = [q for q in srv.requests(ARCHIVE, "GET") if q.header("Range")]
    assert r.returncode == 0, r.stderr
    md5 = hashlib.md5(blob).hexdigest()
    assert gets and {q.header("If-Match") for q in gets} == {md5}
    assert _entry(r.json)["etag_check"] == "md5"
    assert (tmp_path / "d" / "archives" / ARCHIVE).read_bytes() == blob


# --------------------------------------------------------------------------------------------
# A3: a login page or a gzipped body is never recorded as verified


def _metadata_names(dataset) -> list[str]:
    return [f.name for f in dataset.manifest.files if f.kind == "metadata"]


@pytest.mark.parametrize("own_etag", [True, False])
def test_a_captive_portal_page_never_lands_and_the_next_mirror_is_used(
    dataset, tmp_path, own_etag
):
    root, manifest = _mirror(dataset, tmp_path)
    portal_root = tmp_path / "portal"
    portal_root.mkdir()
    data = tmp_path / "d"
    with FaultServer(portal_root, prefix=PREFIX) as portal, \
            FaultServer(root, prefix=PREFIX) as good:
        portal.add_fault(CaptivePortal(etag=own_etag), None, times=None)
        r = _fetch(data, manifest, portal.url, extra=("--split", "train", "--format", "jpeg"))
        assert r.returncode == 3, r.stderr
        assert len(r.error_lines) == 1, r.stderr
        assert "Traceback" not in r.stderr
        for name in [*_metadata_names(dataset), ARCHIVE]:
            assert not (data / "metadata" / name).exists()
            assert not (data / "archives" / name).exists()
        assert not Records(data / ".isic2020" / "records.json").files
        # Portal first, the real mirror second, in one run: the portal host fails, the
        # mirror serves, the data is exact.
        both = _fetch(tmp_path / "d2", manifest, portal.url, good.url,
                      extra=("--split", "train", "--format", "jpeg"))
    assert both.returncode == 0, both.stderr
    for f in dataset.manifest.files:
        if f.kind == "metadata" and f.split == "train":
            assert (tmp_path / "d2" / "metadata" / f.name).read_bytes() == \
                dataset.path(f.name).read_bytes()
    assert sorted(p.stem for p in (tmp_path / "d2" / "jpeg" / "train").iterdir()) == \
        sorted(dataset.train_names)


def test_a_gzip_encoded_body_never_lands_and_a_later_run_heals(dataset, tmp_path):
    root, manifest = _mirror(dataset, tmp_path)
    data = tmp_path / "d"
    with FaultServer(root, prefix=PREFIX) as srv:
        srv.add_fault(GzipBody(), None, times=None)
        r = _fetch(data, manifest, srv.url, extra=("--split", "all", "--format", "none"))
        assert r.returncode == 3, r.stderr
        assert len(r.error_lines) == 1 and "Content-Encoding" in r.error_lines[0], r.stderr
        assert not list((data / "metadata").glob("*"))
        srv.clear_faults()
        again = _fetch(data, manifest, srv.url, extra=("--split", "all", "--format", "none"))
    assert again.returncode == 0, again.stderr
    for name in _metadata_names(dataset):
        assert (data / "metadata" / name).read_bytes() == dataset.path(name).read_bytes()


def test_a_bad_record_from_an_older_run_is_not_trusted_and_heals(dataset, tmp_path):
    """records.json from an older run vouches for a login page stored as every CSV and as
    the zip: the next run against a good mirror re-fetches them, no manual deletes."""
    root, manifest = _mirror(dataset, tmp_path)
    data = tmp_path / "d"
    page = CaptivePortal().body
    records = Records(data / ".isic2020" / "records.json")
    for name in [*_metadata_names(dataset), ARCHIVE]:
        final = data / ("archives" if name == ARCHIVE else "metadata") / name
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_bytes(page)
        st = final.stat()
        records.put_file(FileRecord(
            name=name, size=len(page), etag=hashlib.md5(page).hexdigest(),
            sha256=hashlib.sha256(page).hexdigest(), md5=hashlib.md5(page).hexdigest(),
            url="http://portal.invalid/" + name, etag_check="md5",
            st_size=st.st_size, st_mtime_ns=st.st_mtime_ns,
        ))
    listed = run_cli("list", "--data-dir", str(data), "--json", env=cli_env(manifest))
    assert listed.returncode == 0, listed.stderr
    states = {row["name"]: row["state"] for row in listed.json["files"]}
    assert states[ARCHIVE] == "present, not the file the manifest describes", states
    with FaultServer(root, prefix=PREFIX) as srv:
        r = _fetch(data, manifest, srv.url, extra=("--split", "train", "--format", "jpeg"))
    assert r.returncode == 0, r.stderr
    assert (data / "archives" / ARCHIVE).read_bytes() == dataset.path(ARCHIVE).read_bytes()
    for f in dataset.manifest.files:
        if f.kind == "metadata" and f.split == "train":
            assert (data / "metadata" / f.name).read_bytes() == dataset.path(f.name).read_bytes()
    assert sorted(p.stem for p in (data / "jpeg" / "train").iterdir()) == \
        sorted(dataset.train_names)


# --------------------------------------------------------------------------------------------
# The repair search itself (real files, no server): which combinations it can tell apart


def _copies(tmp_path: Path, size: int, damage_a: list[int], damage_b: list[int]):
    good = random.Random(size).randbytes(size)
    a, b = bytearray(good), bytearray(good)
    for pos in damage_a:
        a[pos] ^= 0x10
    for pos in damage_b:
        b[pos] ^= 0x10
    pa, pb = tmp_path / "a.part", tmp_path / "b.part"
    pa.write_bytes(a)
    pb.write_bytes(b)
    return good, pa, pb


def test_repair_combines_the_good_chunks_of_two_damaged_copies(tmp_path):
    """Copy one is damaged in one chunk, copy two in another: neither is right alone; the
    combination that reproduces the sha256 is found and only that chunk is taken."""
    from isic2020.transfer.repair import CHUNK, ContentCheck, repair

    size = 10 * CHUNK + 777
    good, pa, pb = _copies(tmp_path, size, [3 * CHUNK + 5], [7 * CHUNK + 9])
    res = repair(pa, pb, ContentCheck(sha256=hashlib.sha256(good).hexdigest()))
    assert pa.read_bytes() == good
    assert res.differing == 2
    assert res.replaced == [[3 * CHUNK, 4 * CHUNK]]


def test_repair_of_a_multipart_etag_tries_every_candidate_part_size(tmp_path):
    from isic2020.transfer.repair import ContentCheck, repair

    size = 3 * MiB + 5
    good, pa, pb = _copies(tmp_path, size, [2 * MiB], [])
    etag = multipart_etag_of(good, MiB)
    res = repair(pa, pb, ContentCheck(multipart=etag, part_sizes=(2 * MiB, MiB)))
    assert pa.read_bytes() == good and res.replaced


@pytest.mark.parametrize(
    ("damage_a", "damage_b", "why"),
    [
        ([1000], [1000], "identical"),  # the same damage in both: the source sends it
        ([1000], [1001], "no combination"),  # both copies damaged in the same chunk
    ],
)
def test_repair_says_why_when_no_combination_matches(tmp_path, damage_a, damage_b, why):
    from isic2020.transfer.repair import ContentCheck, RepairFailed, repair

    good, pa, pb = _copies(tmp_path, MiB, damage_a, damage_b)
    before = pa.read_bytes()
    with pytest.raises(RepairFailed, match=why):
        repair(pa, pb, ContentCheck(md5=hashlib.md5(good).hexdigest()))
    assert pa.read_bytes() == before  # nothing written when nothing matched


def test_repair_refuses_copies_that_differ_in_too_many_places(tmp_path):
    from isic2020.transfer.repair import CHUNK, MAX_DIFFERING, ContentCheck, RepairFailed, repair

    n = MAX_DIFFERING + 1
    good, pa, pb = _copies(tmp_path, n * CHUNK, [i * CHUNK for i in range(n)], [])
    with pytest.raises(RepairFailed, match="differ in"):
        repair(pa, pb, ContentCheck(sha256=hashlib.sha256(good).hexdigest()))


def test_part_size_candidates_follow_s3_rules():
    from isic2020.transfer.digests import MAX_CANDIDATES, MIN_PART, etag_kind, part_size_candidates

    size = 23 * 10**9
    parts = -(-size // (8 * MiB))
    assert part_size_candidates(size, parts)[0] == 8 * MiB
    assert len(part_size_candidates(size, 2)) <= MAX_CANDIDATES
    assert all(p >= MIN_PART for p in part_size_candidates(size, 2))
    assert part_size_candidates(4 * MiB, 4 * MiB) == []  # a part per byte is no S3 upload
    assert etag_kind("0" * 32 + "-10000") == "multipart"
    assert etag_kind("0" * 32 + "-10001") == "opaque"


def test_verify_reports_a_recorded_login_page_as_the_archive(dataset, tmp_path):
    """A complete data directory whose archive an older run replaced by a login page and
    recorded: ``isic2020 verify`` does not trust the record (exit 1, the archive named); the
    next ``fetch`` puts the real archive back."""
    root, manifest = _mirror(dataset, tmp_path)
    data = tmp_path / "d"
    with FaultServer(root, prefix=PREFIX) as srv:
        first = _fetch(data, manifest, srv.url, extra=("--split", "train", "--format", "jpeg"))
        assert first.returncode == 0, first.stderr
        archive = data / "archives" / ARCHIVE
        page = CaptivePortal(etag=True).body
        archive.write_bytes(page)
        records = Records(data / ".isic2020" / "records.json")
        rec = records.file(ARCHIVE)
        assert rec is not None
        st = archive.stat()
        records.put_file(dataclasses.replace(
            rec, size=len(page), sha256=hashlib.sha256(page).hexdigest(),
            st_size=st.st_size, st_mtime_ns=st.st_mtime_ns,
        ))
        checked = run_cli("verify", "--data-dir", str(data), "--split", "train", "--format",
                          "jpeg", "--json", env=cli_env(manifest))
        assert checked.returncode == 1, checked.stdout
        failed = [c for c in checked.json["checks"] if c["status"] == "failed"]
        assert [c["name"] for c in failed] == [f"archive/{ARCHIVE}"], failed
        again = _fetch(data, manifest, srv.url, extra=("--split", "train", "--format", "jpeg"))
    assert again.returncode == 0, again.stderr
    assert archive.read_bytes() == dataset.path(ARCHIVE).read_bytes()
