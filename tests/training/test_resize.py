"""`isic2020 resize` (issue 15 item 1) through the real CLI, on real JPEG files.

Photo-like synthetic JPEGs (``build_dataset(photo=True)``: shading, a lesion, hair, grain),
small enough to keep the suite quick but large enough that the decoder's DCT scaling is used.
Every user flow: fetch (from a FaultServer) or extract, resize, verify, re-run, change the
recipe, kill -9 mid-run, a damaged source, a full disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import time
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.cli import cli_cmd, cli_env, run_cli
from support.dataset import install
from support.fs import remount_size, small_filesystem
from support.servers import FaultServer

import isic2020
from isic2020.synthetic import PHOTO_SIZES, build_dataset, photo_jpeg
from isic2020.training.recipe import make_recipe
from isic2020.training.resize import crop_box, resize_image

PREFIX = "/challenges/2020/"
SIZES = [(640, 480), (480, 640), (1024, 683), (936, 527)]  # landscape, portrait, 3:2, 16:9


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("photo"), n_train=24, n_test=8, photo=True,
                         photo_sizes=SIZES, distinct_images=4, compression="stored")


@pytest.fixture
def data(dataset, tmp_path: Path) -> Path:
    """A data directory holding the dataset's CSVs and extracted JPEGs."""
    layout = install(dataset, tmp_path / "data")
    r = run_cli("extract", "--data-dir", str(layout.root), "-q", env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    return layout.root


def _run(dataset, *args: str, timeout: float = 180):
    return run_cli(*args, env=cli_env(dataset.manifest_path), timeout=timeout)


def _resize(dataset, data: Path, *args: str):
    return _run(dataset, "resize", "--data-dir", str(data), "--json", *args)


def _outputs(folder: Path) -> dict[str, tuple[int, int, int]]:
    """split/name -> (inode, mtime_ns, size) of every output image."""
    out = {}
    for split in ("train", "test"):
        for p in sorted((folder / split).glob("ISIC_*.jpg")):
            st = p.stat()
            out[f"{split}/{p.name}"] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


@cache
def _photo(w: int, h: int) -> bytes:
    return photo_jpeg(w, h, seed=w + h)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


# --------------------------------------------------------------------------------------------
# The image work


@pytest.mark.parametrize("mode", ["crop", "fit", "squash"])
@pytest.mark.parametrize("wh", [(6000, 4000), (2848, 4288), (1872, 1053), (1024, 768)])
def test_output_is_faithful_to_a_full_decode_and_lanczos(mode: str, wh: tuple[int, int]) -> None:
    """The fast path (DCT-scaled decode, then Lanczos, then q90) stays >= 35 dB PSNR from the
    slow reference (full decode + Lanczos) on photo-like content, at the exact size."""
    w, h = wh
    src = _photo(w, h)
    recipe = make_recipe(512, mode, 90)
    with Image.open(io.BytesIO(resize_image(src, recipe))) as out:
        out.load()
        got = out.convert("RGB")
    with Image.open(io.BytesIO(src)) as im:
        im.load()
        ref = im.resize(recipe.fmt.out_size(w, h), Image.Resampling.LANCZOS,
                        box=crop_box(w, h, recipe.fmt))
    assert got.size == ref.size
    assert got.size == ((512, 512) if mode != "fit" else
                        (512, round(h * 512 / w)) if w >= h else (round(w * 512 / h), 512))
    assert _psnr(got, ref) >= 35.0


def test_exif_orientation_is_applied() -> None:
    """A portrait photo stored landscape with EXIF orientation 6 comes out upright (as
    vipsthumbnail and ImageMagick -auto-orient make it), without EXIF."""
    im = Image.open(io.BytesIO(photo_jpeg(800, 400, seed=5)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    out = Image.open(io.BytesIO(resize_image(buf.getvalue(), make_recipe(100, "fit", 90))))
    assert out.size == (50, 100)
    assert out.getexif().get(0x0112) is None


def test_photo_mode_makes_photo_sized_jpegs(tmp_path: Path) -> None:
    ds = build_dataset(tmp_path / "m", n_train=4, n_test=2, photo=True, distinct_images=2,
                       photo_sizes=PHOTO_SIZES[-2:], compression="stored")
    with zipfile.ZipFile(ds.archive("train", "jpeg")) as zf:
        members = [i for i in zf.infolist() if i.filename.startswith("train/")]
        sizes = {Image.open(io.BytesIO(zf.read(i))).size for i in members}
    assert sizes == {(1024, 768), (2848, 4288)}
    assert (6000, 4000) in PHOTO_SIZES and any(h > w for w, h in PHOTO_SIZES)


# --------------------------------------------------------------------------------------------
# User flows


def test_resize_verify_and_rerun_does_no_work(dataset, data: Path) -> None:
    r = _resize(dataset, data, "--size", "256")
    assert r.returncode == 0, r.stderr
    doc = r.json
    n = len(dataset.train_names) + len(dataset.test_names)
    assert (doc["images"], doc["resized"], doc["unchanged"]) == (n, n, 0)
    folder = data / "jpeg-256"
    assert sorted(p.stem for p in (folder / "train").iterdir()) == sorted(dataset.train_names)
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["recipe"]["size"] == 256 and recipe["recipe"]["mode"] == "crop"
    assert recipe["recipe"]["quality"] == 90 and recipe["recipe"]["filter"] == "lanczos"
    assert recipe["recipe"]["libraries"]["pillow"] == Image.__version__
    for key, rec in recipe["outputs"].items():
        raw = (folder / key).read_bytes()
        assert len(raw) == rec["size"] and hashlib.sha256(raw).hexdigest() == rec["sha256"]
        assert Image.open(io.BytesIO(raw)).size == (256, 256)
    assert len(recipe["outputs"]) == n

    v = _run(dataset, "verify", "--data-dir", str(data), "--format", "jpeg-256", "--json")
    assert v.returncode == 0, v.stdout
    names = {c["name"] for c in v.json["checks"]}
    assert {"images/jpeg-256/train/names", "images/jpeg-256/test/decode",
            "images/jpeg-256/train/recipe outputs"} <= names

    before, recipe_before = _outputs(folder), (folder / "recipe.json").stat()
    again = _resize(dataset, data, "--size", "256")
    assert again.returncode == 0, again.stderr
    assert (again.json["resized"], again.json["unchanged"], again.json["adopted"]) == (0, n, 0)
    assert _outputs(folder) == before  # not one output rewritten: same inode, mtime, size
    st = (folder / "recipe.json").stat()
    assert (st.st_ino, st.st_mtime_ns) == (recipe_before.st_ino, recipe_before.st_mtime_ns)


def test_other_mode_gets_its_own_folder_and_a_changed_recipe_is_refused(
    dataset, data: Path
) -> None:
    assert _resize(dataset, data, "--size", "128").returncode == 0
    before = _outputs(data / "jpeg-128")
    fit = _resize(dataset, data, "--size", "128", "--mode", "fit")
    assert fit.returncode == 0, fit.stderr
    assert fit.json["folder"].endswith("jpeg-128-fit")
    sizes = {Image.open(p).size for p in (data / "jpeg-128-fit" / "train").iterdir()}
    assert {max(s) for s in sizes} == {128} and len(sizes) > 1  # aspect kept
    r = _resize(dataset, data, "--size", "128", "--quality", "80")
    assert r.returncode == 2
    assert len(r.error_lines) == 1 and "quality 90 -> 80" in r.error_lines[0]
    assert r.json["ok"] is False and r.json["exit_code"] == 2
    assert _outputs(data / "jpeg-128") == before  # nothing redone, nothing mixed in


def test_a_recipe_made_by_another_pillow_is_refused(dataset, data: Path) -> None:
    assert _resize(dataset, data, "--size", "64").returncode == 0
    path = data / "jpeg-64" / "recipe.json"
    doc = json.loads(path.read_text())
    doc["recipe"]["libraries"]["pillow"] = "9.0.0"
    path.write_text(json.dumps(doc))
    r = _resize(dataset, data, "--size", "64")
    assert r.returncode == 2 and len(r.error_lines) == 1
    assert f"pillow 9.0.0 -> {Image.__version__}" in r.error_lines[0]


def test_subset_fetch_resizes_and_verifies_the_subset(dataset, tmp_path: Path) -> None:
    data = tmp_path / "sub"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        f = _run(dataset, "fetch", "--data-dir", str(data), "--mirror", srv.url, "--split",
                 "train", "--sample", "6", "--seed", "2", "--json")
    assert f.returncode == 0, f.stderr
    chosen = sorted(p.stem for p in (data / "jpeg" / "train").iterdir())
    assert len(chosen) == 6
    r = _resize(dataset, data, "--size", "96", "--split", "train")
    assert r.returncode == 0, r.stderr
    assert (r.json["images"], r.json["resized"]) == (6, 6)
    assert sorted(p.stem for p in (data / "jpeg-96" / "train").iterdir()) == chosen
    v = _run(dataset, "verify", "--data-dir", str(data), "--split", "train", "--format",
             "jpeg-96", "--json")
    assert v.returncode == 0, v.stdout
    names = next(c for c in v.json["checks"] if c["name"] == "images/jpeg-96/train/names")
    assert names["figures"]["expected"] == 6


def test_verify_finds_a_damaged_or_foreign_output(dataset, data: Path) -> None:
    assert _resize(dataset, data, "--size", "64").returncode == 0
    victim = data / "jpeg-64" / "train" / f"{dataset.train_names[0]}.jpg"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    (data / "jpeg-64" / "train" / f"{dataset.train_names[1]}.jpg").unlink()
    v = _run(dataset, "verify", "--data-dir", str(data), "--format", "jpeg-64", "--json")
    assert v.returncode == 1
    failed = {c["name"]: c for c in v.json["checks"] if c["status"] == "failed"}
    assert victim.name in " ".join(failed["images/jpeg-64/train/recipe outputs"]["problems"])
    assert failed["images/jpeg-64/train/names"]["figures"]["missing_names"] == [
        dataset.train_names[1]]
    # The next resize makes the missing one again. The damaged one kept its size: resize
    # trusts the stat (that is what makes a re-run free), verify is what hashes.
    again = _resize(dataset, data, "--size", "64")
    assert again.returncode == 0 and again.json["resized"] == 1


def test_sigkill_mid_run_keeps_finished_images_and_the_rerun_finishes(
    dataset, data: Path
) -> None:
    env = cli_env(dataset.manifest_path)
    proc = subprocess.Popen(
        cli_cmd("resize", "--data-dir", str(data), "--size", "300", "--workers", "1", "-q"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    out_dir = data / "jpeg-300" / "train"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out_dir.is_dir() and len(list(out_dir.glob("ISIC_*.jpg"))) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    kept = _outputs(data / "jpeg-300")
    n = len(dataset.train_names) + len(dataset.test_names)
    assert 3 <= len(kept) < n
    for key in kept:  # nothing half-written at a final name
        with Image.open(data / "jpeg-300" / key) as im:
            im.load()
            assert im.size == (300, 300)
    r = _resize(dataset, data, "--size", "300")
    assert r.returncode == 0, r.stderr
    assert r.json["adopted"] == len(kept) and r.json["resized"] == n - len(kept)
    after = _outputs(data / "jpeg-300")
    assert {k: after[k] for k in kept} == kept  # the finished images were kept, not redone
    assert not [p for p in (data / "jpeg-300").rglob(".*")]  # no temporaries left
    v = _run(dataset, "verify", "--data-dir", str(data), "--format", "jpeg-300")
    assert v.returncode == 0, v.stdout


def test_damaged_source_is_one_line_exit_1_and_the_rest_is_done(dataset, data: Path) -> None:
    bad = data / "jpeg" / "train" / f"{dataset.train_names[2]}.jpg"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])
    r = _resize(dataset, data, "--size", "64")
    assert r.returncode == 1
    assert len(r.error_lines) == 1 and f"jpeg/train/{bad.name}" in r.error_lines[0]
    assert "Traceback" not in r.stderr
    n = len(dataset.train_names) + len(dataset.test_names)
    assert r.json["resized"] == n - 1 and [d["name"] for d in r.json["damaged"]] == [
        f"jpeg/train/{bad.name}"]
    assert not (data / "jpeg-64" / "train" / bad.name).exists()
    bad.write_bytes(good)  # the user fetches it again
    again = _resize(dataset, data, "--size", "64")
    assert again.returncode == 0
    assert (again.json["resized"], again.json["unchanged"]) == (1, n - 1)


@pytest.mark.parametrize("args, what", [
    (("--size", "0"), "--size"),
    (("--size", "99999"), "--size"),
    (("--size", "64", "--mode", "stretch"), "--mode"),
    (("--size", "64", "--quality", "0"), "--quality"),
    (("--mode", "crop"), "--size"),
])
def test_bad_options_are_usage_errors(dataset, data: Path, args, what: str) -> None:
    r = _run(dataset, "resize", "--data-dir", str(data), *args)
    assert r.returncode == 2 and len(r.error_lines) == 1 and what in r.error_lines[0]
    assert not list(data.glob("jpeg-*"))


def test_no_images_is_a_usage_error(dataset, tmp_path: Path) -> None:
    layout = install(dataset, tmp_path / "d", archives=False)
    r = _resize(dataset, layout.root, "--size", "64")
    assert r.returncode == 2 and len(r.error_lines) == 1
    assert "no JPEG images" in r.error_lines[0] and "isic2020 fetch" in r.error_lines[0]
    assert not list(layout.root.glob("jpeg-*"))  # no empty folder, no recipe left behind


def test_python_api_is_isic2020_resize(dataset, data: Path) -> None:
    report = isic2020.resize(64, mode="squash", data_dir=data, workers=2)
    assert report.exit_code == 0 and report.resized == len(dataset.train_names) + len(
        dataset.test_names)
    assert Path(report.folder).name == "jpeg-64-squash"


def test_full_disk_is_exit_3_nothing_partial_and_the_next_run_resumes(
    dataset, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    with small_filesystem(mnt, 64 * 1024 * 1024):
        layout = install(dataset, mnt / "data")
        env = cli_env(dataset.manifest_path)
        assert run_cli("extract", "--data-dir", str(layout.root), "-q", env=env).returncode == 0
        used = shutil.disk_usage(mnt).used
        remount_size(mnt, used + 300 * 1024)  # room for the recipe and a few outputs only
        r = run_cli("resize", "--data-dir", str(layout.root), "--size", "600", "--json",
                    env=env, timeout=180)
        assert r.returncode == 3, r.stderr
        assert len(r.error_lines) == 1 and "No space left" in r.error_lines[0]
        folder = layout.root / "jpeg-600"
        for p in folder.rglob("*"):
            assert not p.name.startswith("."), f"temporary left behind: {p}"
            if p.suffix == ".jpg":
                with Image.open(p) as im:
                    im.load()
        before = len(list(folder.rglob("ISIC_*.jpg")))
        remount_size(mnt, 64 * 1024 * 1024)
        again = run_cli("resize", "--data-dir", str(layout.root), "--size", "600", "--json",
                        env=env, timeout=180)
        assert again.returncode == 0, again.stderr
        n = len(dataset.train_names) + len(dataset.test_names)
        assert again.json["resized"] + again.json["unchanged"] + again.json["adopted"] == n
        assert again.json["unchanged"] + again.json["adopted"] == before
        v = run_cli("verify", "--data-dir", str(layout.root), "--format", "jpeg-600", env=env)
        assert v.returncode == 0, v.stdout
