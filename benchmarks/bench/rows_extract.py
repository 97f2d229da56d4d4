"""Row 3: extraction against unzip, 7z and zipfile."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from .common import EXTRACTALL, TRAIN_ZIP
from .data import Dataset, human
from .harness import Sample, count_files, rmtree, sync
from .isic import isic, isic_env
from .results import Bench, Tool, find, fmt_ratio, ratio, verdict


def row_extract(b: Bench, ds: Dataset) -> None:
    name = f"3 extract {ds.n_train:,} members ({human(ds.train_bytes)}, deflated)"
    out = b.work / "run" / "extract"
    zip_path = ds.train_zip
    n_members = ds.n_train
    tools: list[Tool] = []

    def fresh(d: Path) -> Callable[[int], None]:
        def f(rep: int) -> None:
            rmtree(d)
            d.mkdir(parents=True)
            sync()
        return f

    def check(d: Path, want: int) -> Callable[[int, Sample], None]:
        def f(rep: int, s: Sample) -> None:
            n = count_files(d)
            if n < want:
                raise RuntimeError(f"{n} files extracted, expected {want}")
            rmtree(d)
        return f

    d_isic = out / "isic"
    staged = out / "staged" / TRAIN_ZIP  # on the scratch filesystem, so it can be hard-linked

    def before_isic(rep: int) -> None:
        rmtree(d_isic)
        (d_isic / "archives").mkdir(parents=True)
        try:
            os.link(zip_path, d_isic / "archives" / TRAIN_ZIP)  # same file, no copy
        except OSError:  # the scratch filesystem is another device: copy once, link after
            if not staged.exists():
                staged.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(zip_path, staged)
            os.link(staged, d_isic / "archives" / TRAIN_ZIP)
        sync()

    def after_isic(rep: int, s: Sample) -> None:
        doc = json.loads(s.stdout)
        a = doc["archives"][0]
        if a["images"] != n_members or a["written"] != n_members:
            raise RuntimeError(f"extract wrote {a['written']} of {a['images']} images")
        s.extra["engine_s"] = a["seconds"]
        n = count_files(d_isic / "jpeg" / "train")
        if n != n_members:
            raise RuntimeError(f"{n} images on disk, expected {n_members}")
        rmtree(d_isic)

    tools.append(Tool(
        "isic2020 extract", lambda rep: isic("extract", "--split", "train", "--format", "jpeg",
                                             "--json", "--quiet", "--data-dir", str(d_isic)),
        is_isic=True, env=isic_env(ds.manifest), before=before_isic, after=after_isic,
        work_bytes=ds.train_bytes,
    ))
    if shutil.which("unzip"):
        d = out / "unzip"
        tools.append(Tool("unzip -q", lambda rep, d=d: ["unzip", "-q", str(zip_path), "-d",
                                                        str(d)],
                          before=fresh(d), after=check(d, n_members), work_bytes=ds.train_bytes))
        d2 = out / "unzip-sync"
        tools.append(Tool("unzip -q && sync", lambda rep, d=d2: [
            "sh", "-c", f'unzip -q "{zip_path}" -d "{d}" && sync'],
            before=fresh(d2), after=check(d2, n_members), work_bytes=ds.train_bytes))
    if shutil.which("7z"):
        d = out / "7z"
        tools.append(Tool("7z x", lambda rep, d=d: ["7z", "x", "-y", "-bd", "-bso0", "-bsp0",
                                                    f"-o{d}", str(zip_path)],
                          before=fresh(d), after=check(d, n_members), work_bytes=ds.train_bytes))
    d = out / "python"
    tools.append(Tool(
        "python zipfile.extractall",
        lambda rep, d=d: [sys.executable, "-c", EXTRACTALL, str(zip_path), str(d)],
        before=fresh(d), after=check(d, n_members), work_bytes=ds.train_bytes))
    b.log(f"{name}: {', '.join(t.label for t in tools)}")
    tools = b.run_tools("row 3", tools)
    isic_t = tools[0]
    seven, unz = find(tools, "7z x"), find(tools, "unzip -q")
    for t in tools:
        r = tgt = notes = ""
        rate = n_members / t.med("wall") if t.samples else 0
        if t is isic_t:
            r7, ru = ratio(t, seven), ratio(t, unz)
            parts = [fmt_ratio(r7, "7z"), fmt_ratio(ru, "unzip")]
            r = "; ".join(p for p in parts if p)
            ok7 = None if r7 is None else r7 <= 1.0
            oku = None if ru is None else ru <= 0.7
            tgt = "; ".join([verdict(ok7, "<= 1.0x 7z"), verdict(oku, "<= 0.7x unzip")])
            eng = t.med_extra("engine_s")
            notes = f"{rate:,.0f} files/s; CRC-32 checked, flat layout, os.sync()" + (
                f"; {eng:.2f} s in-engine" if eng is not None else "")
        else:
            notes = f"{rate:,.0f} files/s; CRC-32 checked"
        b.add(name, t, r, tgt, notes)
