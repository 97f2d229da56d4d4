"""Hostile archives and metadata from a mirror (issue 11, C2 and F): what a zip's end records
claim, where its directory points, names with non-ASCII digits, formula cells in the CSVs.

Every archive here is a real file served by a real server on 127.0.0.1 (or placed in
DATA/archives), crafted with ``zipfile`` and then patched with ``struct``; every run is the
real CLI in a subprocess. The promise each test checks: a refusal is one line naming the
archive or CSV and what is wrong, exit 1 (the mirror's data is damaged, not the user's disk),
nothing lands at a final path, and memory stays flat whatever the end records claim.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from support.cli import CliResult, cli_cmd, cli_env, run_cli
from support.dataset import add_entry, install
from support.rss import run_with_peak_rss
from support.servers import BadLength

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.catalog.tables import load_metadata
from isic2020.errors import VerificationError
from isic2020.synthetic import build_dataset

TRAIN = "ISIC_2020_Training_JPEG.zip"
GT = "ISIC_2020_Training_GroundTruth.csv"
GT2 = "ISIC_2020_Training_GroundTruth_v2.csv"
MiB = 1 << 20
#: Peak RSS any run may reach, whatever a zip claims (the issue's bound).
RSS_LIMIT = 400 * MiB
ASCII_IMAGE = re.compile(r"ISIC_[0-9]{7}\.jpg", re.ASCII)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("hostile"), n_train=60, n_test=10)


# --------------------------------------------------------------------------------------------
# helpers


def _mirror(dataset, served: Path, tmp_path: Path) -> dict[str, Path]:
    """Copy every file of the synthetic mirror into the served folder."""
    out = {}
    for f in dataset.manifest.files:
        out[f.name] = served / f.name
        shutil.copyfile(dataset.path(f.name), out[f.name])
    return out


def _manifest(dataset, tmp_path: Path, changed: dict[str, Path], *, pin: bool = True) -> Path:
    """The synthetic manifest with the entries of ``changed`` describing the crafted files
    (size; sha256 too when ``pin``: a sparse file of a terabyte is not hashed)."""
    man = load_manifest(dataset.manifest_path)
    files = []
    for f in man.files:
        if f.name in changed:
            p = changed[f.name]
            sha = hashlib.sha256(p.read_bytes()).hexdigest() if pin else None
            f = dataclasses.replace(f, size=p.stat().st_size, sha256=sha, etag=None)
        files.append(f)
    path = tmp_path / "crafted.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=tuple(files))))
    return path


def _eocd_at(data: bytes) -> int:
    return data.rfind(b"PK\x05\x06")


def sparse_claim(path: Path, cd_size: int, entries: int = 1000) -> None:
    """A sparse file whose end records claim a ``cd_size``-byte directory that ends exactly
    where they begin (so only the size is absurd): classic records when the numbers fit,
    ZIP64 ones (record + locator + saturated EOCD, as a >4 GB zip has) otherwise."""
    cd_offset = 4096
    end = cd_offset + cd_size
    if end < 0xFFFFFFFF and entries < 0xFFFF:
        records = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, cd_size,
                              cd_offset, 0)
    else:
        records = (
            struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                        cd_size, cd_offset)
            + struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
            + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                          0xFFFFFFFF, 0)
        )
    with open(path, "wb") as fh:
        fh.write(b"PK\x03\x04" + b"\x00" * 26)
        fh.truncate(end)
        fh.seek(end)
        fh.write(records)


def run_measured(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[CliResult, int]:
    """Run the CLI and return its result and *its own* peak RSS in bytes (support.rss: forked
    from a small parent, so pytest's own memory, which Linux carries across fork and exec, is
    not charged to it)."""
    run = run_with_peak_rss(cli_cmd(*args), env=env, timeout=timeout)
    result = CliResult(run.returncode, run.stdout, run.stderr)
    assert not run.timed_out, f"timed out after {timeout} s: {result.stderr[-2000:]}"
    return result, run.peak_rss


def _one_damaged_line(r: CliResult, *names: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert len(r.error_lines) == 1, r.stderr
    line = r.error_lines[0]
    for n in names:
        assert n in line, line
    return line


def _images(data: Path, split: str = "train") -> list[str]:
    d = data / "jpeg" / split
    return sorted(os.listdir(d)) if d.is_dir() else []


# --------------------------------------------------------------------------------------------
# C2: a directory claim sizes nothing before it is checked


@pytest.mark.parametrize(
    "cd_size", [1 << 30, 10**12], ids=["1GB-classic-records", "1TB-zip64-records"]
)
@pytest.mark.parametrize("command", ["inspect", "direct"])
def test_absurd_directory_claim_is_refused_in_one_line_with_flat_memory(
    dataset, served_dir, fault_server, tmp_path, cd_size, command
):
    """The end records of a (sparse) served zip claim a 1 GB or 1 TB central directory: the
    remote reader refuses it (exit 1, one line naming the archive and the claim) without
    allocating or downloading it: peak RSS < 400 MB, a few KB from the server."""
    _mirror(dataset, served_dir, tmp_path)
    fault_server.set_etag(TRAIN, "opaque")  # nothing hashes the terabyte
    sparse_claim(served_dir / TRAIN, cd_size)
    manifest = _manifest(dataset, tmp_path, {TRAIN: served_dir / TRAIN}, pin=False)
    data = tmp_path / "d"
    args = ["--data-dir", str(data), "--mirror", fault_server.url, "--split", "train"]
    args = ["inspect", *args] if command == "inspect" else ["fetch", *args, "--direct"]
    r, rss = run_measured(*args, env=cli_env(manifest))
    line = _one_damaged_line(r, TRAIN, str(cd_size))
    assert "central directory" in line
    assert rss < RSS_LIMIT, f"peak RSS {rss / MiB:.0f} MB"
    assert fault_server.bytes_sent(TRAIN) < 1 * MiB
    assert _images(data) == []


def test_extract_refuses_an_absurd_directory_claim_with_flat_memory(dataset, tmp_path):
    """The same claim in an archive already in DATA/archives: ``zipfile`` would read the
    whole claimed directory into memory first; the end records are checked before it."""
    data = tmp_path / "d"
    install(dataset, data)
    archive = data / "archives" / TRAIN
    sparse_claim(archive, 1 << 30)
    manifest = _manifest(dataset, tmp_path, {TRAIN: archive}, pin=False)
    r, rss = run_measured("extract", "--data-dir", str(data), "--split", "train",
                          env=cli_env(manifest))
    line = _one_damaged_line(r, TRAIN, str(1 << 30))
    assert "central directory" in line
    assert rss < RSS_LIMIT, f"peak RSS {rss / MiB:.0f} MB"
    assert _images(data) == []


def test_zip64_locator_cannot_hide_the_record_zipfile_reads(tmp_path):
    """``zipfile`` reads the ZIP64 end record just before the locator, whatever the locator
    says: a locator pointing at a harmless record elsewhere is refused, not trusted."""
    from isic2020.archive import zipformat as zipend

    path = tmp_path / "x.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train/ISIC_0000000.jpg", b"x")
    good = buf.getvalue()
    cd_off = struct.unpack_from("<L", good, _eocd_at(good) + 16)[0]
    body, cd = good[:cd_off], good[cd_off:_eocd_at(good)]
    harmless = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, len(cd),
                           len(body))
    claimed = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, 1 << 30,
                          len(body))
    end = len(body) + len(cd)
    blob = (body + cd + harmless + claimed
            + struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
            + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                          0xFFFFFFFF, 0))
    path.write_bytes(blob)
    with open(path, "rb") as fh, pytest.raises(zipend.BadEndRecords, match="locator"):
        zipend.local_end_records(fh.fileno())


# --------------------------------------------------------------------------------------------
# F: a directory offset outside the file is a damaged archive, not a disk error


def test_directory_offset_past_the_file_is_a_damaged_archive_not_a_disk_error(
    dataset, served_dir, fault_server, tmp_path
):
    """A normal fetch of a zip whose end record puts the directory past the end of the file
    (the archive's own sha256 pinned, so it lands): ``zipfile`` used to shift every member
    to a negative offset and ``pread`` failed with EINVAL, reported as "cannot write ...:
    Invalid argument; fix permissions", exit 3. It is the archive that is wrong: exit 1."""
    files = _mirror(dataset, served_dir, tmp_path)
    z = files[TRAIN]
    blob = bytearray(z.read_bytes())
    at = _eocd_at(blob)
    struct.pack_into("<L", blob, at + 16, len(blob) + 1000)
    z.write_bytes(bytes(blob))
    manifest = _manifest(dataset, tmp_path, {TRAIN: z})
    data = tmp_path / "d"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", fault_server.url, "--split",
                "train", env=cli_env(manifest))
    line = _one_damaged_line(r, TRAIN)
    assert "cannot write" not in line and "permissions" not in line
    assert _images(data) == []


# --------------------------------------------------------------------------------------------
# F: ASCII digits only


UNICODE_NAMES = ["ISIC_\uff12\uff16\uff13\uff17\uff10\uff11\uff11",  # fullwidth 2637011
                 "ISIC_\u0662\u0666\u0663\u0667\u0660\u0661\u0661"]  # Arabic-Indic 2637011


@pytest.mark.parametrize("mode", ["extract", "direct"])
def test_zip_members_with_non_ascii_digits_never_land(
    dataset, served_dir, fault_server, tmp_path, mode
):
    """``train/ISIC_２６３７０１１.jpg`` is not an ISIC image name: it is a non-image entry
    (reported, never written), in the extraction after a download and in ``--direct``."""
    files = _mirror(dataset, served_dir, tmp_path)
    jpeg = zipfile.ZipFile(files[TRAIN]).read(f"train/{dataset.train_names[0]}.jpg")
    for n in UNICODE_NAMES:
        add_entry(files[TRAIN], f"train/{n}.jpg", jpeg)
    manifest = _manifest(dataset, tmp_path, {TRAIN: files[TRAIN]})
    data = tmp_path / "d"
    extra = ["--direct"] if mode == "direct" else []
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", fault_server.url, "--split",
                "train", "--json", *extra, env=cli_env(manifest))
    assert r.returncode == 0, r.stderr[-3000:]
    got = _images(data)
    assert all(ASCII_IMAGE.fullmatch(n) for n in got), got
    assert got == sorted(f"{n}.jpg" for n in dataset.train_names)
    if mode == "extract":  # the extraction report lists what it did not unpack
        (z,) = [f for f in r.json["files"] if f["name"] == TRAIN]
        non_images = z["extraction"]["non_images"]
        assert {f"train/{n}.jpg" for n in UNICODE_NAMES} <= set(non_images), non_images


def _edit_csv(path: Path, edit) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(df)
    df.to_csv(path, index=False, lineterminator="\r\n")


def test_metadata_names_with_non_ascii_digits_are_refused(dataset, tmp_path):
    """A ground-truth row named ``ISIC_٢٦٣٧٠١١`` (and a patient ``IP_٠...``): ``verify``
    flags both, ``load_metadata`` refuses the file in one line naming it."""
    data = tmp_path / "d"
    install(dataset, data, archives=False)
    name, patient = UNICODE_NAMES[1], "IP_\u0660\u0661\u0662\u0663\u0664\u0665\u0666"

    def edit(df: pd.DataFrame) -> None:
        df.loc[1, "image_name"] = name
        df.loc[2, "patient_id"] = patient

    for csv in (GT, GT2):
        _edit_csv(data / "metadata" / csv, edit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(VerificationError) as exc:
            load_metadata("train", data, image_format=None,
                          manifest=str(dataset.manifest_path))
    line = exc.value.one_line()
    assert GT2 in line and "\n" not in line
    v = run_cli("verify", "--data-dir", str(data), "--split", "train", "--format", "none",
                "--json", env=cli_env(dataset.manifest_path))
    assert v.returncode == 1, v.stdout[-3000:]
    problems = [p for c in v.json["checks"] if c["name"] == f"metadata/{GT2}"
                for p in c.get("problems") or []]
    assert any(name in p for p in problems), problems
    assert any(patient in p for p in problems), problems


# --------------------------------------------------------------------------------------------
# F: formula cells never reach an exported CSV


FORMULAS = [
    '=HYPERLINK("http://evil.example/","click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]


@pytest.mark.parametrize("payload", FORMULAS, ids=["eq", "plus", "minus", "at", "tab", "cr"])
def test_formula_cells_in_the_metadata_are_refused_by_export_and_folds(
    dataset, tmp_path, payload
):
    """A mirror's ground truth with a spreadsheet formula in a benign row's diagnosis (or
    site, or lesion id): ``verify`` flags it, and ``export`` and ``folds`` refuse the CSV in
    one line naming it (exit 1) instead of copying the formula into train.csv / folds.csv."""
    data = tmp_path / "d"
    install(dataset, data, archives=False)
    col = ["diagnosis", "anatom_site_general_challenge", "lesion_id"][
        FORMULAS.index(payload) % 3
    ]

    def edit(df: pd.DataFrame) -> None:
        row = int((df["target"] == "0").idxmax())
        if col in df:
            df.loc[row, col] = payload
        else:  # lesion_id: only in v2; v1 gets the same formula in its diagnosis
            df.loc[row, "diagnosis"] = payload

    for csv in (GT, GT2):
        _edit_csv(data / "metadata" / csv, edit)
    env = cli_env(dataset.manifest_path)
    dest = tmp_path / "export"
    e = run_cli("export", "--data-dir", str(data), str(dest), env=env)
    line = _one_damaged_line(e, GT2)
    assert "formula" in line
    assert not (dest / "train.csv").exists()
    f = run_cli("folds", "--data-dir", str(data), env=env)
    _one_damaged_line(f, GT2)
    assert not (data / "folds.csv").exists()
    v = run_cli("verify", "--data-dir", str(data), "--split", "train", "--format", "none",
                env=env)
    assert v.returncode == 1


# --------------------------------------------------------------------------------------------
# F: ASCII digits in headers too


def test_content_length_with_a_latin1_digit_is_not_a_length(
    dataset, served_dir, fault_server, tmp_path
):
    """``Content-Length: \u00b2`` (one Latin-1 byte that ``str.isdigit`` accepts) on every
    answer: it used to end in "internal error ValueError". It is no length: the files still
    land exactly (read to the connection's close, checked against the manifest), or the run
    fails cleanly."""
    _mirror(dataset, served_dir, tmp_path)
    fault_server.add_fault(BadLength(), times=None)
    data = tmp_path / "d"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", fault_server.url, "--split",
                "train", "--format", "none", env=cli_env(dataset.manifest_path))
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr[-3000:]
    for f in dataset.manifest.metadata("train"):
        assert (data / "metadata" / f.name).read_bytes() == dataset.path(f.name).read_bytes()
