"""Row 11: ``isic2020 export --layout webdataset`` (and parquet) vs ``tar`` of the same files.

The data directory is the synthetic metadata (tests/support/metadata.py) with a real JPEG per
training image (photo-like noise, ``member_min..member_max`` bytes x 10, unique bytes per
name); it is built once per run under the work folder. Every repetition writes into a fresh
DEST. The peers archive exactly the training JPEGs: plain ``tar -cf`` and GNU tar with the
options that make it deterministic like our shards (``--sort=name --mtime=@0 --owner=0
--group=0 --numeric-owner``). Ours also writes each sample's ``.json`` and ``.cls`` members,
hashes every shard (sha256, for the index) and checks each JPEG's markers. Goal (issue 15):
<= 1.2x tar's wall time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .common import ROOT
from .data import jpeg_pool
from .harness import Sample, rmtree
from .isic import isic, isic_env
from .results import Bench, Tool, fmt_ratio, ratio, verdict

#: The export alone, timed inside the child after the imports (interpreter start-up and the
#: pandas import cost a second or more on a busy machine and say nothing about the writer).
ENGINE = """
import json, sys, time
import pandas  # noqa: F401 - imported before the clock starts
from isic2020.commands.export_shards import ShardOptions, export_shards
t = time.perf_counter()
export_shards(sys.argv[2], ShardOptions(split="train", data_dir=sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def _build(folder: Path, patients: int, lo: int, hi: int) -> tuple[int, int]:
    """Metadata and one JPEG per training image; returns (images, bytes)."""
    from support.metadata import make_synthetic

    from isic2020.synthetic import jpeg_bytes

    rmtree(folder)
    syn = make_synthetic(folder, patients=patients, seed=10)
    pool = jpeg_pool(lo, hi, seed=10)
    out = folder / "jpeg" / "train"
    out.mkdir(parents=True)
    total = 0
    for i, name in enumerate(sorted(syn.train["image_name"])):
        data = jpeg_bytes(pool[(i * 7919) % len(pool)], name)
        (out / f"{name}.jpg").write_bytes(data)
        total += len(data)
    return len(syn.train), total


def row_shards(b: Bench) -> None:
    name = "11 shard export vs tar (train JPEGs)"
    if shutil.which("tar") is None:
        b.log(f"{name}: MISSING tar, row skipped")
        b.skipped.append(name)
        return
    patients = 10 if b.p.quick else 380
    lo, hi = b.p.member_min * 10, b.p.member_max * 10
    data = b.work / "run" / "shards-data"
    b.log(f"{name}: building {patients} patients' images")
    n, total = _build(data, patients, lo, hi)
    dest = b.work / "run" / "shards-out"
    env = isic_env(ROOT / "manifests" / "isic2020.toml")
    env.pop("ISIC2020_MANIFEST", None)

    def fresh(rep: int) -> None:
        rmtree(dest)
        dest.mkdir(parents=True)

    def fresh_dest(rep: int) -> None:
        rmtree(dest)

    def check_index(rep: int, s: Sample) -> None:
        doc = json.loads((dest / "isic2020-index.json").read_text())
        got = sum(e["samples"] for e in doc["splits"]["train"]["shards"])
        if got != n:
            raise RuntimeError(f"the index lists {got} samples, not {n}")

    def check_tar(rep: int, s: Sample) -> None:
        size = (dest / "train.tar").stat().st_size
        if size < total:
            raise RuntimeError(f"tar wrote {size} bytes, less than the {total} of the images")

    def export(layout: str) -> Tool:
        return Tool(
            f"isic2020 export --layout {layout}",
            lambda rep: isic("export", "--layout", layout, "--split", "train", "--data-dir",
                             str(data), str(dest), "--json"),
            is_isic=True, env=env, before=fresh_dest, after=check_index, work_bytes=total,
            items=n)

    def engine_seconds(rep: int, s: Sample) -> None:
        check_index(rep, s)
        s.extra["engine_s"] = json.loads(s.stdout)["seconds"]

    src = str(data / "jpeg" / "train")
    tools = [
        export("webdataset"),
        Tool("export_shards (webdataset, in process)", lambda rep: [
            *isic()[:1], "-c", ENGINE, str(data), str(dest)], is_isic=True, env=env,
            before=fresh_dest, after=engine_seconds, work_bytes=total, items=n),
        Tool("tar -cf", lambda rep: ["tar", "-cf", str(dest / "train.tar"), "-C", src, "."],
             before=fresh, after=check_tar, work_bytes=total, items=n),
        Tool("tar -cf --sort=name --mtime=@0 --owner=0 ...", lambda rep: [
            "tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner",
            "-cf", str(dest / "train.tar"), "-C", src, "."],
            before=fresh, after=check_tar, work_bytes=total, items=n),
        export("parquet"),
    ]
    b.log(f"{name}: {n:,} images, {total / 1e6:.0f} MB")
    ran = b.run_tools("row 11", tools)
    ours, engine, tar = ran[0], ran[1], ran[2]
    r = ratio(ours, tar)
    def cpu_vs_tar(t: Tool) -> str:  # CPU is what load on the machine spares
        ok = t.samples and tar.samples and tar.med("cpu") > 0
        return f"; CPU {t.med('cpu') / tar.med('cpu'):.2f}x tar's" if ok else ""

    for t in ran:
        if t is ours:
            b.add(name, t, fmt_ratio(r, "tar"), verdict(None if r is None else r <= 1.2,
                  "<= 1.2x tar"), f"{n:,} images, {total / 1e6:.0f} MB; + .json/.cls, sha256"
                  + cpu_vs_tar(t))
        elif t is engine:
            secs = t.med_extra("engine_s")
            tar_s = tar.med("wall") if tar.samples else None
            er = secs / tar_s if secs is not None and tar_s else None
            b.add(name, t, fmt_ratio(er, "tar") + " (engine)" if er else "",
                  verdict(None if er is None else er <= 1.2, "engine <= 1.2x tar"),
                  f"export_shards alone {secs:.2f} s" if secs is not None else "")
        elif t.label.startswith("isic2020"):
            b.add(name, t, fmt_ratio(ratio(t, tar), "tar"), "",
                  "Parquet, HF Image encoding" + cpu_vs_tar(t))
        else:
            b.add(name, t, fmt_ratio(ratio(t, tar), "tar") if t is not tar else "", "",
                  "the same JPEGs, nothing else")
    rmtree(dest)
    rmtree(data)
