"""Row 9: ``isic2020 folds`` on the real metadata (shipped in tests/data/isic2020-metadata).

A speed claim, so it lives here and not in the tests (tests/commands/test_folds.py checks the folds
themselves): ``make_folds`` on 33,126 images takes well under a second. Two numbers: the whole
command as a user runs it (Python start-up and the pandas import included) and the engine
alone, timed inside the child around ``make_folds`` (best of three, so the code's own cost).
"""

from __future__ import annotations

import json

from .common import ROOT
from .harness import Sample, rmtree
from .isic import isic, isic_env
from .results import Bench, Tool, verdict

ENGINE = """
import json, sys, time
from isic2020.commands.folds import make_folds
make_folds(data_dir=sys.argv[1])  # warm: imports, page cache
times = []
for _ in range(3):
    t = time.perf_counter()
    report = make_folds(data_dir=sys.argv[1], k=5, seed=42)
    times.append(time.perf_counter() - t)
print(json.dumps({"seconds": min(times), "images": report.images}))
"""


def row_folds(b: Bench) -> None:
    from support.metadata import make_real_data_dir

    data = b.work / "run" / "folds"
    rmtree(data)
    make_real_data_dir(data)
    env = isic_env(ROOT / "manifests" / "isic2020.toml")

    def after_cmd(rep: int, s: Sample) -> None:
        doc = json.loads(s.stdout)
        if doc.get("images") != 33126:
            raise RuntimeError(f"folds saw {doc.get('images')} images, not 33,126")

    def after_engine(rep: int, s: Sample) -> None:
        doc = json.loads(s.stdout)
        if doc["images"] != 33126:
            raise RuntimeError(f"make_folds saw {doc['images']} images, not 33,126")
        s.extra["engine_s"] = doc["seconds"]

    name = "9 folds, real metadata (33,126 images, k=5)"
    tools = [
        Tool("isic2020 folds --json", lambda rep: isic(
            "folds", "--data-dir", str(data), "--json"), is_isic=True, env=env,
            after=after_cmd, items=33126),
        Tool("make_folds (in process, best of 3)", lambda rep: [
            *isic()[:1], "-c", ENGINE, str(data)], is_isic=True, env=env, after=after_engine),
    ]
    b.log(f"{name}: {', '.join(t.label for t in tools)}")
    for t in b.run_tools("row 9", tools):
        if not t.samples:
            b.add(name, t)
            continue
        engine = t.med_extra("engine_s")
        if engine is None:
            b.add(name, t, "", "", "whole command: start-up, imports, CSVs, folds.csv")
        else:
            b.add(name, t, "", verdict(engine < 1.0, "make_folds < 1 s"),
                  f"make_folds alone {engine:.2f} s")
