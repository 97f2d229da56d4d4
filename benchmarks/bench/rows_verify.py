"""Rows 4 and 5: verify, and the re-run of a complete fetch."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .common import PREFIX
from .data import Dataset, human
from .harness import Sample, rmtree, run_child, sync
from .isic import fetch_report, isic, isic_env
from .results import Bench, Tool, verdict


def row_verify_and_rerun(b: Bench, ds: Dataset) -> None:
    from support.servers import NginxServer

    data = b.work / "run" / "complete"
    n_images = ds.n_train + ds.n_test
    env = isic_env(ds.manifest)
    srv = NginxServer(ds.mirror, PREFIX) if b.nginx is not None else None
    if srv is not None:
        srv.start()
    try:
        base = srv.url if srv is not None else ds.mirror.resolve().as_uri() + "/"
        rmtree(data)
        b.log("rows 4/5: a complete fetch of the whole synthetic dataset (setup, timed once)")
        sync()
        s = run_child(isic("fetch", "--split", "all", "--format", "jpeg", "--json", "--quiet",
                           "--mirror", base, "--data-dir", str(data)), env=env)
        if s.rc != 0:
            b.isic_failures.append(f"complete fetch: exit {s.rc}: {s.stderr.strip()[-400:]}")
            return
        doc = fetch_report(s)
        total = sum(f.get("size", 0) for f in doc["files"])
        setup = Tool("isic2020 fetch (first, complete)", lambda rep: [], is_isic=True,
                     work_bytes=total)
        setup.samples.append(s)
        b.add("5a complete fetch, all JPEG (first run, once)", setup, "", "",
              f"{human(doc['bytes_transferred'])} transferred; download + extract + verify of "
              f"{n_images:,} images")

        # Row 4: verify
        name = f"4 verify {ds.n_train:,} + {ds.n_test:,} images"
        tools = []
        for deep in (False, True):
            argv = isic("verify", "--split", "all", "--format", "jpeg", "--json", "--quiet",
                        "--data-dir", str(data)) + (["--deep"] if deep else [])

            def after_v(rep: int, s: Sample) -> None:
                doc = json.loads(s.stdout)
                if doc.get("exit_code", 1) != 0 and not doc.get("ok", True):
                    raise RuntimeError("verify failed")
                secs = 0.0
                for c in doc.get("checks", []):
                    figs = c.get("figures") or {}
                    if c.get("name", "").endswith("/integrity"):
                        secs += float(figs.get("seconds", 0))
                s.extra["integrity_s"] = secs

            tools.append(Tool("isic2020 verify" + (" --deep" if deep else ""),
                              lambda rep, argv=argv: argv, is_isic=True, env=env,
                              after=after_v, items=n_images))
        b.log(f"{name}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 4", tools)
        for t in tools:
            if not t.samples:
                b.add(name, t)
                continue
            rate = n_images / t.med("wall")
            tgt = ""
            notes = f"{rate:,.0f} images/s (whole command, {os.cpu_count()} CPUs)"
            if "--deep" not in t.label:
                tgt = verdict(rate >= 20000, ">= 20,000 images/s")
                ins = t.med_extra("integrity_s")
                if ins:
                    notes += f"; integrity check alone {n_images / ins:,.0f} images/s"
            else:
                notes += "; decodes every JPEG, re-hashes archives"
            b.add(name, t, "", tgt, notes)

        # Row 5: re-runs
        name = "5b re-run of a complete fetch"
        rerun_tools = []
        for label, extra in (("isic2020 fetch (re-run, all, extract+verify)", []),
                             ("isic2020 fetch --no-extract (re-run, train)",
                              ["--no-extract", "--split", "train"])):
            argv = isic("fetch", "--split", "all", "--format", "jpeg", "--json", "--quiet",
                        "--mirror", base, "--data-dir", str(data), *extra)
            if extra:
                argv = isic("fetch", "--format", "jpeg", "--json", "--quiet", "--mirror", base,
                            "--data-dir", str(data), *extra)
            box: dict[str, Any] = {}

            def before_r(rep: int, box: dict[str, Any] = box) -> None:
                if srv is not None:
                    es = srv.log_entries()
                    box["n"], box["bytes"] = len(es), sum(e.body_bytes_sent for e in es)

            def after_r(rep: int, s: Sample, box: dict[str, Any] = box) -> None:
                doc = fetch_report(s)
                s.extra["reported"] = doc["bytes_transferred"]
                if srv is not None:
                    time.sleep(0.05)
                    es = srv.log_entries()
                    s.extra["requests"] = len(es) - box["n"]
                    s.extra["sent"] = sum(e.body_bytes_sent for e in es) - box["bytes"]

            rerun_tools.append(Tool(label, lambda rep, argv=argv: argv, is_isic=True, env=env,
                                    before=before_r, after=after_r))
        b.log(f"{name}: {', '.join(t.label for t in rerun_tools)}")
        rerun_tools = b.run_tools("row 5", rerun_tools)
        for t in rerun_tools:
            if not t.samples:
                b.add(name, t)
                continue
            sent = max(s.extra.get("sent", 0) for s in t.samples)
            reqs = max(s.extra.get("requests", 0) for s in t.samples)
            rep_bytes = max(s.extra.get("reported", 0) for s in t.samples)
            ok = t.med("wall") < 1.0 and sent == 0 and rep_bytes == 0
            b.add(name, t, "", verdict(ok, "< 1 s, 0 bytes"),
                  f"server sent {sent} bytes in {reqs} requests; report says {rep_bytes} bytes")
    finally:
        if srv is not None:
            srv.close()
