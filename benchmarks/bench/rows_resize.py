"""Row 10: ``isic2020 resize --size 512`` of photo-sized JPEGs vs vipsthumbnail and ImageMagick.

The same files for every tool: ``build_dataset(photo=True)`` (the six camera sizes of
ISIC 2020, 6000 x 4000 down to 1024 x 768 and a portrait, photo-like content), extracted once
into a data directory cached under ``WORK/data``. Every tool makes 512 x 512 centre crops at
quality 90 with shrink-on-load (JPEG DCT scaling) as its documented fast path:

* ``isic2020 resize --size 512`` (every core, processes);
* ``vipsthumbnail -s 512x512 -m centre`` over all files in one process (libvips threads);
* ImageMagick ``mogrify -define jpeg:size=1024x1024 -thumbnail 512x512^ -gravity center
  -extent 512x512`` in one process (``jpeg:size`` is its shrink-on-load hint, 2x the target
  like isic2020's and libvips' margin).

Each output set is checked (count, every image 512 x 512). Peak RSS: the row's column is the
largest single process; the notes give the sum of every process' peak (an upper bound of
what the run held at once), which is what the 400 MB target is about. The re-run (the same
command on the finished folder) shows that an unchanged recipe does no work.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .harness import Sample, rmtree
from .isic import isic, isic_env
from .results import Bench, Tool, find, fmt_ratio, ratio, verdict

SIZE = 512


def _dataset(b: Bench) -> tuple[Path, Path, list[Path]]:
    """(data dir, manifest, source JPEGs): built once per image count."""
    from support.dataset import install

    from isic2020.synthetic import PHOTO_SIZES, build_dataset

    n_train, n_test = (10, 2) if b.p.quick else (100, 20)
    folder = b.work / "data" / f"resize-{n_train}-{n_test}"
    key = {"kind": "resize", "n_train": n_train, "n_test": n_test, "v": 1}
    data, mirror = folder / "data", folder / "mirror"
    stamp = folder / "stamp.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != key:
        rmtree(folder)
        b.log(f"row 10: building {n_train + n_test} photo-sized JPEGs")
        ds = build_dataset(mirror, n_train=n_train, n_test=n_test, photo=True,
                           distinct_images=len(PHOTO_SIZES), compression="stored")
        install(ds, data)
        import isic2020

        isic2020.extract(data_dir=data, manifest=ds.manifest_path)
        rmtree(data / "archives")
        stamp.write_text(json.dumps(key))
    sources = sorted((data / "jpeg").rglob("ISIC_*.jpg"))
    return data, mirror / "isic2020-synthetic.toml", sources


def _check_outputs(folder: Path, n: int) -> None:
    from PIL import Image

    files = sorted(folder.rglob("*.jpg"))
    if len(files) != n:
        raise RuntimeError(f"{len(files)} outputs in {folder}, expected {n}")
    for f in files:
        with Image.open(f) as im:
            if im.size != (SIZE, SIZE):
                raise RuntimeError(f"{f.name} is {im.size}, not {SIZE} x {SIZE}")


def _magick() -> list[str] | None:
    if shutil.which("magick"):
        return ["magick", "mogrify"]
    return ["mogrify"] if shutil.which("mogrify") else None


def row_resize(b: Bench) -> None:
    data, manifest, sources = _dataset(b)
    n = len(sources)
    total = sum(p.stat().st_size for p in sources)
    out = b.work / "run" / "resize"
    env = isic_env(manifest)
    src = [str(p) for p in sources]

    def isic_after(rep: int, s: Sample, *, rerun: bool = False) -> None:
        doc = json.loads(s.stdout)
        want = (0, n) if rerun else (n, 0)
        if (doc["resized"], doc["unchanged"]) != want:
            raise RuntimeError(f"resized/unchanged {doc['resized']}/{doc['unchanged']}, "
                               f"expected {want}")
        if not rerun:
            _check_outputs(data / f"jpeg-{SIZE}", n)

    def peer_after(folder: Path):
        return lambda rep, s: _check_outputs(folder, n)

    def fresh(folder: Path):
        def before(rep: int) -> None:
            rmtree(folder)
            folder.mkdir(parents=True)
        return before

    resize_cmd = isic("resize", "--size", str(SIZE), "--data-dir", str(data), "--json")
    tools = [
        Tool("isic2020 resize", lambda rep: resize_cmd, is_isic=True, env=env,
             before=lambda rep: rmtree(data / f"jpeg-{SIZE}"), after=isic_after,
             work_bytes=total, items=n),
        Tool("vipsthumbnail", lambda rep: [
            "vipsthumbnail", "-s", f"{SIZE}x{SIZE}", "-m", "centre",
            "-o", f"{out / 'vips'}/%s.jpg[Q=90]", *src],
            before=fresh(out / "vips"), after=peer_after(out / "vips"), work_bytes=total)
        if shutil.which("vipsthumbnail") else None,
        Tool("ImageMagick mogrify", lambda rep: [
            *(_magick() or []), "-path", str(out / "im"), "-define",
            f"jpeg:size={2 * SIZE}x{2 * SIZE}", "-thumbnail", f"{SIZE}x{SIZE}^", "-gravity",
            "center", "-extent", f"{SIZE}x{SIZE}", "-quality", "90", *src],
            before=fresh(out / "im"), after=peer_after(out / "im"), work_bytes=total)
        if _magick() else None,
        Tool("isic2020 resize (re-run)", lambda rep: resize_cmd, is_isic=True, env=env,
             after=lambda rep, s: isic_after(rep, s, rerun=True), items=n),
    ]
    for peer, pkg in (("vipsthumbnail", "libvips-tools"), ("mogrify", "imagemagick")):
        if not shutil.which(peer):
            b.skipped.append(f"row 10 peer {peer} missing (apt-get install {pkg})")
    name = (f"10 resize to {SIZE} crop, {n} photo-sized JPEGs "
            f"({total / 1e6:.0f} MB, 6000x4000 to 1024x768)")
    tools = [t for t in tools if t is not None]
    b.log(f"{name}: {', '.join(t.label for t in tools)}")
    ran = b.run_tools("row 10", tools)
    first, vips = find(ran, "isic2020 resize"), find(ran, "vipsthumbnail")
    magick = find(ran, "ImageMagick mogrify")
    for t in ran:
        if not t.samples:
            b.add(name, t)
            continue
        rss_sum = t.med_extra("rss_sum_mb")
        notes = f"{n / t.med('wall'):.1f} images/s; RSS of all processes {rss_sum:.0f} MB"
        if t is first:
            r_v = ratio(t, vips)
            ok = None if r_v is None else (r_v <= 0.6 and (rss_sum or 0) < 400)
            if vips is not None and vips.samples:  # CPU is what load on the machine spares
                notes += f"; CPU {t.med('cpu') / vips.med('cpu'):.2f}x vipsthumbnail's"
            b.add(name, t, fmt_ratio(r_v, "vipsthumbnail"),
                  verdict(ok, "<= 0.6x vipsthumbnail, RSS < 400 MB"),
                  notes + (f"; {fmt_ratio(ratio(t, magick), 'ImageMagick')}" if magick else ""))
        elif t.label.endswith("(re-run)") and first is not None:
            r = ratio(t, first)
            b.add(name, t, fmt_ratio(r, "first run"),
                  verdict(r is not None and r < 0.2, "re-run < 0.2x the first, 0 resized"),
                  notes)
        else:
            b.add(name, t, "", "", notes)
