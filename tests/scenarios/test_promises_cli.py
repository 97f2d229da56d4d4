"""README promises about the command line and the Python API that no other test showed:
the default data directory, the one-line internal error and ``ISIC2020_DEBUG``, every
``list`` state and ``list --mirror``, ``--images FILE``, subsets that add up and how
``verify`` checks them, progress bars only on a terminal, ``fetch --format dicom`` and
``dicom-original`` end to end, and ``isic2020.fetch()``.

Everything runs against a real FaultServer on 127.0.0.1 serving a synthetic ISIC 2020 mirror,
and the CLI as a real process (its progress bars on a real pseudo-terminal).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import pydicom
import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.fixtures import served_dataset
from support.servers import FaultServer, Status, range_starts_at_or_after, refused_url
from support.terminal import run_on_pty

import isic2020
from isic2020.errors import Isic2020Error
from isic2020.synthetic import ARCHIVE_FOLDERS

PREFIX = "/challenges/2020/"
ZIP = "ISIC_2020_Training_JPEG.zip"
TEST_ZIP = "ISIC_2020_Test_JPEG.zip"
TEST_CSV = "ISIC_2020_Test_Metadata.csv"
GT = "ISIC_2020_Training_GroundTruth.csv"
KiB = 1024


# Every format; a training JPEG zip of ~440 KB (200 images of 128 px, many chunks).
dataset, mirror = served_dataset(
    "syn", n_train=200, n_test=10, image_size=128, formats=("jpeg", "dicom", "dicom-original"),
)


def _env(dataset, **extra: str) -> dict[str, str]:
    return cli_env(dataset.manifest_path, **extra)


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("isic2020: error")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


# --------------------------------------------------------------------------------------------
# The default data directory


@pytest.mark.parametrize("which", ["ISIC2020_DATA_DIR", "XDG_DATA_HOME", "HOME"])
def test_default_data_directory_is_the_env_var_then_xdg_then_home(
    dataset, mirror, tmp_path, which
):
    """Without ``--data-dir``: ``$ISIC2020_DATA_DIR``, else ``$XDG_DATA_HOME/isic2020``, else
    ``~/.local/share/isic2020``. Each is set in turn (the later ones unset); the files land
    there and nowhere else (not in HOME beside it, not in the working directory)."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in _env(dataset).items() if k != "XDG_DATA_HOME"}
    env["HOME"] = str(home)
    # The process runs elsewhere: a relative PYTHONPATH would no longer find this package.
    package_root = str(Path(isic2020.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    if which == "ISIC2020_DATA_DIR":
        env["ISIC2020_DATA_DIR"] = str(tmp_path / "env-data")
        env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
        expected = tmp_path / "env-data"
    elif which == "XDG_DATA_HOME":
        env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
        expected = tmp_path / "xdg" / "isic2020"
    else:
        expected = home / ".local" / "share" / "isic2020"
    r = run_cli("fetch", "--mirror", mirror.url, "--split", "test", "--format", "none",
                "--json", env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert r.json["data_dir"] == str(expected)
    assert (expected / "metadata" / TEST_CSV).read_bytes() == dataset.path(TEST_CSV).read_bytes()
    assert _files_under(cwd) == []
    outside = [p for p in _files_under(tmp_path) if not (tmp_path / p).is_relative_to(expected)]
    assert outside == [], outside
    listed = run_cli("list", "--json", env=env, cwd=cwd)
    assert listed.returncode == 0 and listed.json["data_dir"] == str(expected)


# --------------------------------------------------------------------------------------------
# Internal errors


def test_an_internal_error_is_one_line_and_isic2020_debug_shows_the_traceback(dataset, tmp_path):
    """The CLI's last line of defence against its own bugs. No input is known to cause one (each
    one found became a proper error), so the child is given one: a ``sitecustomize`` module on
    its path makes the data directory's resolution raise an AttributeError, exactly as a bug in
    the package would. The user sees one line naming the error and saying how to get the
    traceback, exit 3; with ``ISIC2020_DEBUG=1`` the traceback."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import isic2020.store.layout as _layout\n"
        "def _broken(*args, **kwargs):\n"
        "    raise AttributeError('a bug planted by the test')\n"
        "_layout.Layout.at = staticmethod(_broken)\n"
    )
    data = tmp_path / "d"
    env = _env(dataset)
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = run_cli("list", "--data-dir", str(data), env=env)
    assert r.returncode == 3, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    line = _one_error_line(r.stderr)
    assert re.fullmatch(
        r"isic2020: error: internal error AttributeError: a bug planted by the test; please "
        r"report it \(set ISIC2020_DEBUG=1 to see the traceback\)", line
    ), line

    r = run_cli("list", "--data-dir", str(data), env={**env, "ISIC2020_DEBUG": "1"})
    assert r.returncode != 0
    assert "Traceback (most recent call last)" in r.stderr
    assert "AttributeError: a bug planted by the test" in r.stderr.splitlines()[-1]


# --------------------------------------------------------------------------------------------
# list


def _state(listing, name: str) -> str:
    (row,) = [f for f in listing.json["files"] if f["name"] == name]
    return row["state"]


def _list(data: Path, dataset, *extra: str, **env: str):
    r = run_cli("list", "--data-dir", str(data), "--json", *extra, env=_env(dataset, **env))
    assert r.returncode == 0, r.stderr
    return r


def test_list_shows_partial_verified_changed_and_extracted(dataset, tmp_path):
    """``missing`` before anything; ``partial (N)`` after a fetch that failed half-way (N the
    bytes kept, as the partial state records them); ``verified, extracted`` after the fetch
    completes; ``present, changed since verified`` for a CSV edited afterwards; an archive
    deleted by ``--no-keep-archives`` still says ``extracted``."""
    data = tmp_path / "d"
    size = dataset.path(ZIP).stat().st_size
    assert _state(_list(data, dataset), ZIP) == "missing"
    args = ("fetch", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
            "--connections", "2")
    env = _env(dataset, ISIC2020_RETRY_WINDOW="1", ISIC2020_CHUNK_SIZE=str(16 * KiB))
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        rule = srv.add_fault(Status.internal_error(), ZIP, times=None,
                             when=range_starts_at_or_after(size // 2))
        r = run_cli(*args, "--mirror", srv.url, env=env)
        assert r.returncode == 3, r.stderr
        state = json.loads((data / ".isic2020" / "partial" / (ZIP + ".state.json")).read_text())
        kept = sum(b - a for a, b in state["done"])
        assert 0 < kept < size
        listing = _list(data, dataset)
        m = re.fullmatch(r"partial \((\d+(?:\.\d)?) KB\)", _state(listing, ZIP))
        assert m, _state(listing, ZIP)
        assert abs(float(m.group(1)) * 1000 - kept) <= 50
        assert _state(listing, GT) == "verified"

        srv.remove_fault(rule)
        r = run_cli(*args, "--mirror", srv.url, env=env)
        assert r.returncode == 0, r.stderr
        listing = _list(data, dataset)
        assert _state(listing, ZIP) == "verified, extracted"
        assert _state(listing, GT) == "verified"
        assert _state(listing, TEST_ZIP) == "missing"

        with open(data / "metadata" / GT, "ab") as fh:
            fh.write(b"\r\n")
        assert _state(_list(data, dataset), GT) == "present, changed since verified"

        r = run_cli("fetch", "--data-dir", str(data), "--split", "test", "--format", "jpeg",
                    "--no-keep-archives", "--mirror", srv.url, env=env)
        assert r.returncode == 0, r.stderr
    assert not (data / "archives" / TEST_ZIP).exists()
    assert _state(_list(data, dataset), TEST_ZIP).endswith(", extracted")


def test_list_mirror_shows_the_mirror_urls_instead_of_the_manifest_hosts(dataset, tmp_path):
    """``list`` shows the manifest's hosts; ``list --mirror URL`` (repeatable, or
    ``$ISIC2020_MIRROR`` space separated) shows ``URL/<official name>`` in their place."""
    data = tmp_path / "d"
    plain = _list(data, dataset)
    manifest = {e.name: e for e in dataset.manifest.files}
    for row in plain.json["files"]:
        assert row["urls"] == manifest[row["name"]].urls()
        assert all(u.startswith("https://") for u in row["urls"])
    one, two = "http://mirror-a.example/isic", "file:///mnt/isic2020"
    for listing in (_list(data, dataset, "--mirror", one, "--mirror", two),
                    _list(data, dataset, ISIC2020_MIRROR=f"{one} {two}")):
        for row in listing.json["files"]:
            assert row["urls"] == [f"{one}/{row['name']}", f"{two}/{row['name']}"]
    assert not data.exists()  # list only reads


# --------------------------------------------------------------------------------------------
# Subsets through the CLI


def _fetch_subset(data: Path, mirror, dataset, images: Path):
    return run_cli("fetch", "--data-dir", str(data), "--mirror", mirror.url, "--split", "train",
                   "--images", str(images), "--json", env=_env(dataset))


def _on_disk(data: Path) -> list[str]:
    return sorted(p.stem for p in (data / "jpeg" / "train").iterdir())


def test_images_file_fetches_exactly_those_images_from_a_list_or_a_csv(
    dataset, mirror, tmp_path
):
    """``--images FILE``: one name per line with ``#`` comments and blank lines, or a CSV with
    an ``image_name`` column; exactly those images arrive, byte for byte the archive's
    members, and only their ranges (plus the archive's tail) leave the server."""
    names = dataset.train_names
    listed = tmp_path / "names.txt"
    listed.write_text(f"# my picks\n{names[3]}\n\n{names[10]}  # a comment\n{names[20]}\n")
    csv = tmp_path / "names.csv"
    csv.write_text("image_name,note\n" + "".join(f"{n},x\n" for n in names[30:34]))
    zip_size = dataset.path(ZIP).stat().st_size
    with zipfile.ZipFile(dataset.path(ZIP)) as zf:
        members = {Path(i.filename).stem: zf.read(i) for i in zf.infolist()
                   if i.filename.startswith(f"{ARCHIVE_FOLDERS[('train', 'jpeg')]}/")}
    for images, want in ((listed, [names[3], names[10], names[20]]), (csv, names[30:34])):
        data = tmp_path / images.name.replace(".", "-")
        mirror.reset_counters()
        r = _fetch_subset(data, mirror, dataset, images)
        assert r.returncode == 0, r.stderr
        assert _on_disk(data) == sorted(want)
        for n in want:
            assert (data / "jpeg" / "train" / f"{n}.jpg").read_bytes() == members[n]
        # the tail (end records, room for a zip comment: 64 KiB), the directory, 3-4 members
        assert mirror.bytes_sent(ZIP) < zip_size / 3
        assert not (data / "archives" / ZIP).exists()


def test_subsets_add_up_and_verify_checks_their_union_then_fails_on_a_missing_image(
    dataset, mirror, tmp_path
):
    """Two ``--images`` fetches: the second keeps what the first brought; ``verify`` passes
    against the union (and says it checked a selection); when one image of the first subset
    is deleted, ``verify`` fails (exit 1, one line) and names it."""
    data = tmp_path / "d"
    names = dataset.train_names
    first, second = names[:3], names[40:44]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(first) + "\n")
    b.write_text("\n".join(second) + "\n")
    assert _fetch_subset(data, mirror, dataset, a).returncode == 0
    r = _fetch_subset(data, mirror, dataset, b)
    assert r.returncode == 0, r.stderr
    assert _on_disk(data) == sorted(first + second)

    v = run_cli("verify", "--data-dir", str(data), "--split", "train", "--json",
                env=_env(dataset))
    assert v.returncode == 0, v.stdout + v.stderr
    checks = {c["name"]: c for c in v.json["checks"]}
    assert checks["images/jpeg/train/selection"]["status"] == "ok"
    assert str(len(first) + len(second)) in checks["images/jpeg/train/selection"]["message"]

    (data / "jpeg" / "train" / f"{first[1]}.jpg").unlink()
    v = run_cli("verify", "--data-dir", str(data), "--split", "train", "--json",
                env=_env(dataset))
    assert v.returncode == 1, v.stdout + v.stderr
    line = _one_error_line(v.stderr)
    assert "verification failed" in line
    failed = [c for c in v.json["checks"] if c["status"] == "failed"]
    assert failed and any(first[1] in json.dumps(c) for c in failed), failed
    assert not any(n in json.dumps(failed) for n in names if n not in first + second), (
        "an image outside the selection was reported missing"
    )


# --------------------------------------------------------------------------------------------
# Progress bars


def _run_on_pty(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    return run_on_pty(cmd, env, columns=120, timeout=120)


def test_progress_bars_on_a_terminal_and_none_when_stderr_is_not_one(dataset, mirror, tmp_path):
    """stderr a terminal: a progress bar per file (``100%``, its name, bytes); stderr a pipe:
    the same fetch prints no bar at all (no ``%|``, no carriage returns); ``--quiet`` on a
    terminal: none either."""
    args = ("fetch", "--mirror", mirror.url, "--split", "train", "--format", "jpeg")
    code, tty = _run_on_pty(cli_cmd(*args, "--data-dir", str(tmp_path / "tty")), _env(dataset))
    assert code == 0, tty
    assert "100%" in tty and "|" in tty
    assert re.search(rf"{re.escape(ZIP)}: *100%", tty), tty
    assert re.search(rf"{re.escape(GT)}: *100%", tty), tty

    r = run_cli(*args, "--data-dir", str(tmp_path / "pipe"), env=_env(dataset))
    assert r.returncode == 0, r.stderr
    assert "%|" not in r.stderr and "\r" not in r.stderr, r.stderr
    assert "100%" not in r.stderr

    code, quiet = _run_on_pty(cli_cmd(*args, "--quiet", "--data-dir", str(tmp_path / "q")),
                              _env(dataset))
    assert code == 0, quiet
    assert "%|" not in quiet and "100%" not in quiet, quiet


# --------------------------------------------------------------------------------------------
# DICOM end to end


@pytest.mark.parametrize("fmt", ["dicom", "dicom-original"])
def test_fetch_format_dicom_end_to_end(dataset, mirror, tmp_path, fmt):
    """``fetch --format dicom`` (the corrected zips) and ``dicom-original`` (the first
    release), both splits: each archive lands exact, every image is its zip member byte for
    byte, readable by pydicom with the CSV's patient, and ``verify --deep`` passes."""
    data = tmp_path / "d"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", mirror.url, "--split", "all",
                "--format", fmt, "--json", env=_env(dataset))
    assert r.returncode == 0, r.stderr
    assert r.json["verification"]["ok"] is True
    man = dataset.manifest
    for split, names in (("train", dataset.train_names), ("test", dataset.test_names)):
        entry = man.archive(split, fmt)
        assert entry is not None
        assert (data / "archives" / entry.name).read_bytes() == dataset.path(
            entry.name).read_bytes()
        folder = data / fmt / split
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.dcm" for n in names)
        with zipfile.ZipFile(dataset.path(entry.name)) as zf:
            for info in zf.infolist():
                assert (folder / Path(info.filename).name).read_bytes() == zf.read(info)
        ds = pydicom.dcmread(folder / f"{names[0]}.dcm")
        assert ds.PatientID.startswith("IP_")
    v = run_cli("verify", "--data-dir", str(data), "--format", fmt, "--deep", "--json",
                env=_env(dataset))
    assert v.returncode == 0, v.stdout + v.stderr
    assert any(c["name"] == f"images/{fmt}/train/dicom vs csv" for c in v.json["checks"])


# --------------------------------------------------------------------------------------------
# The Python API


def test_python_api_fetch_and_verify_as_the_readme_shows(dataset, mirror, tmp_path):
    """``isic2020.fetch(split=..., fmt=..., data_dir=...)`` returns a report whose
    ``to_dict()["bytes_transferred"]`` is what the server sent; ``isic2020.verify(...,
    deep=True)`` passes; a failure is an ``Isic2020Error`` carrying the CLI's exit code."""
    data = tmp_path / "d"
    report = isic2020.fetch(split="train", fmt="jpeg", data_dir=str(data),
                            manifest=dataset.manifest_path, mirrors=[mirror.url])
    doc = report.to_dict()
    assert doc["ok"] is True and report.exit_code == 0
    assert doc["bytes_transferred"] == mirror.bytes_sent() > 0
    assert sorted(p.stem for p in (data / "jpeg" / "train").iterdir()) == sorted(
        dataset.train_names
    )
    checked = isic2020.verify(split="train", fmt="jpeg", data_dir=str(data),
                              manifest=dataset.manifest_path, deep=True)
    assert checked.exit_code == 0, checked.summary_lines()

    with pytest.raises(Isic2020Error) as info:
        isic2020.fetch(split="test", fmt="none", data_dir=str(tmp_path / "e"),
                       manifest=dataset.manifest_path, mirrors=[refused_url()])
    assert info.value.exit_code == 3
    assert "connection refused" in info.value.one_line()
