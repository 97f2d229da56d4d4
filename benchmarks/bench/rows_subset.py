"""Rows 7 and 8: subsets and --direct (byte ranges of the remote zip), bytes served, peak
disk."""

from __future__ import annotations

import dataclasses
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from isic2020.synthetic import ARCHIVE_FOLDERS

from .common import MB, PREFIX, TRAIN_ZIP, MiB
from .data import Dataset, build_image_mirror, human
from .harness import Sample, count_files, du_bytes, rmtree
from .isic import archive_entry, check_file, fetch_report, isic, isic_env
from .results import Bench, Tool, fmt_ratio, ratio, verdict


def zip_layout(path: Path) -> tuple[dict[str, zipfile.ZipInfo], int]:
    """The zip's members by name, and its central directory's size in bytes (46 fixed bytes,
    name, extra field and comment per entry: exactly what a reader of the directory fetches)."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    cd = 0
    for zi in infos:
        enc = "utf-8" if zi.flag_bits & 0x800 else "cp437"
        cd += 46 + len(zi.orig_filename.encode(enc)) + len(zi.extra) + len(zi.comment)
    return {zi.filename: zi for zi in infos}, cd


class Served:
    """Bytes and requests nginx logged for one run (its access log: server-side counting)."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self.n0 = 0

    def mark(self) -> None:
        self.n0 = len(self.srv.log_entries())

    def since(self, want: int | None = None) -> tuple[int, int, int]:
        """(body bytes of every request, of the train zip's, requests) since ``mark``. nginx
        logs a request when its response ends, a moment after the client is done: wait (2 s
        at most) until the total reaches ``want``, the client's own count."""
        zip_path = self.srv.url_path(TRAIN_ZIP)
        deadline = time.monotonic() + 2.0
        while True:
            es = self.srv.log_entries()[self.n0:]
            total = sum(e.body_bytes_sent for e in es)
            if want is None or total >= want or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        zbytes = sum(e.body_bytes_sent for e in es if e.path == zip_path)
        return total, zbytes, len(es)


def _fresh(d: Path) -> Callable[[int], None]:
    def f(rep: int) -> None:
        rmtree(d)
        d.mkdir(parents=True)
    return f


def _fetch_check(d: Path, served: Served, *, images: int | None, archive: int | None,
                 extracted: bool, status: str) -> Callable[[int, Sample], None]:
    """A check of one ``isic2020 fetch --split train --json`` run into ``d``: the report's ok,
    the zip's status, images on disk (``images``; None: none expected), the archive kept
    (``archive`` bytes) or not (None), bytes reported == bytes nginx logged; then records
    served bytes, disk use at the end (walk) and the engine's figures; removes ``d``."""

    def f(rep: int, s: Sample) -> None:
        doc = fetch_report(s)
        entry = archive_entry(doc)
        if entry.get("status") != status and not (status == "downloaded"
                                                  and entry.get("status") == "verified"):
            raise RuntimeError(f"{TRAIN_ZIP}: status {entry.get('status')}, expected {status}")
        total, zbytes, reqs = served.since(doc["bytes_transferred"])
        if total != doc["bytes_transferred"]:
            raise RuntimeError(f"report says {doc['bytes_transferred']} bytes transferred, "
                               f"nginx sent {total}")
        img_dir = d / "jpeg" / "train"
        n = count_files(img_dir) if img_dir.exists() else 0
        if n != (images or 0):
            raise RuntimeError(f"{n} images on disk, expected {images or 0}")
        zpath = d / "archives" / TRAIN_ZIP
        if archive is None:
            if zpath.exists():
                raise RuntimeError(f"{zpath.name} is on disk, expected no archive")
        else:
            check_file(zpath, archive)
        ex = entry.get("extraction") or {}
        if extracted:
            done = ex.get("written", 0) + ex.get("skipped", 0) + ex.get("already_present", 0)
            if done != images:
                raise RuntimeError(f"the report says {done} images unpacked, expected {images}")
        s.extra.update(served=total, served_zip=zbytes, requests=reqs,
                       reported=doc["bytes_transferred"], disk_end=du_bytes(d),
                       engine_s=entry.get("seconds", 0.0), names=sorted(
                           p.stem for p in img_dir.iterdir()) if status == "subset" else [])
        if ex.get("seconds") is not None:
            s.extra["extract_s"] = float(ex["seconds"])
        stream = ex.get("while_downloading") or {}
        if stream.get("members"):
            s.extra["streamed"] = stream.get("unpacked", 0) + stream.get("already_staged", 0)
            s.extra["stream_tail_s"] = float(stream.get("after_download_s", 0.0))
        if "bytes_wanted" in ex:
            s.extra["engine_wanted"] = ex["bytes_wanted"]
            s.extra["directory_bytes"] = ex.get("directory_bytes", 0)
        rmtree(d)

    return f


def _fetch_tool(b: Bench, label: str, base: str, ds: Dataset, d: Path, served: Served,
                extra: Sequence[str], env: dict[str, str] | None = None, **check: Any) -> Tool:
    def before(rep: int) -> None:
        rmtree(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        served.mark()

    argv = isic("fetch", "--split", "train", "--format", "jpeg", "--json", "--quiet",
                "--mirror", base, "--data-dir", str(d), *extra)
    return Tool(label, lambda rep, argv=argv: argv, is_isic=True,
                env={**isic_env(ds.manifest, b.p.chunk_size), **(env or {})}, before=before,
                after=_fetch_check(d, served, **check), work_bytes=ds.train_zip.stat().st_size,
                disk=d)


def _disk_note(t: Tool) -> str:
    peak = t.med_extra("disk_peak")
    end = t.med_extra("disk_end")
    if peak is None:
        return ""
    return f"peak disk {peak / MB:,.0f} MB (at the end {end / MB:,.0f} MB)" if end is not None \
        else f"peak disk {peak / MB:,.0f} MB"


def row_subset(b: Bench, ds: Dataset) -> None:
    from support.servers import NginxServer

    n = min(b.p.sample_n, ds.n_train)
    zip_size = ds.train_zip.stat().st_size
    name = (f"7 subset --sample {n} of {ds.n_train:,} vs full download ({human(zip_size)} zip, "
            "nginx, unthrottled)")
    if b.nginx is None:
        b.skipped.append("row 7: nginx missing")
        return
    out = b.work / "run" / "subset"
    members, cd_bytes = zip_layout(ds.train_zip)
    folder = ARCHIVE_FOLDERS[("train", "jpeg")]
    with NginxServer(ds.mirror, PREFIX) as srv:
        served = Served(srv)
        sub = _fetch_tool(b, f"isic2020 --sample {n} --seed 1", srv.url, ds, out / "sample",
                          served, ["--sample", str(n), "--seed", "1"], images=n, archive=None,
                          extracted=True, status="subset")
        full = _fetch_tool(b, "isic2020 --no-extract (full download)", srv.url, ds,
                           out / "full", served, ["--no-extract"], images=None,
                           archive=zip_size, extracted=False, status="downloaded")
        tools = [sub, full]
        b.log(f"{name}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 7", tools)
    # The members the sample chose (the same every run: --seed) and their compressed bytes.
    wanted = 0
    if sub.samples:
        names = sub.samples[0].extra["names"]
        if any(s.extra["names"] != names for s in sub.samples):
            b.isic_failures.append("row 7: --sample chose different images in different runs")
        for nm in names:
            zi = members.get(f"{folder}/{nm}.jpg")
            if zi is None:
                b.isic_failures.append(f"row 7: {nm}.jpg is not a member of the zip")
                continue
            wanted += zi.compress_size
    sub.work_bytes = wanted + cd_bytes  # CPU s/GB of what a subset has to move
    for t in tools:
        r = tgt = ""
        if not t.samples:
            b.add(name, t)
            continue
        sent, zsent = t.med_extra("served") or 0, t.med_extra("served_zip") or 0
        reqs = t.med_extra("requests") or 0
        if t is sub:
            rr = ratio(t, full)
            r = fmt_ratio(rr, "full download")
            ideal = wanted + cd_bytes
            over = zsent / ideal if ideal else float("nan")
            tgt = verdict(over <= 1.1, "zip bytes served <= 1.1x members + central directory")
            notes = (f"zip bytes served {human(int(zsent))} = {over:.3f}x the {n} members' "
                     f"{human(wanted)} compressed + the {human(cd_bytes)} central directory "
                     f"(engine: {human(int(t.med_extra('engine_wanted') or 0))} wanted, "
                     f"{human(int(t.med_extra('directory_bytes') or 0))} of directory and "
                     f"tail read); {reqs:.0f} requests, {human(int(sent))} with the CSVs"
                     + (f" = {sent / full.med_extra('served'):.1%} of the full download's"
                        if full.samples else ""))
        else:
            notes = (f"served {human(int(sent))} in {reqs:.0f} requests (zip "
                     f"{human(int(zsent))})")
        dn = _disk_note(t)
        b.add(name, t, r, tgt, notes + (f"; {dn}" if dn else ""))


def row_direct(b: Bench, ds: Dataset) -> None:
    from support.servers import NginxServer

    rate = b.p.direct_rate
    zip_size = ds.train_zip.stat().st_size
    name = (f"8 --direct vs download + extract, {human(zip_size)} zip of {ds.n_train:,} "
            f"images, {rate / MiB:g} MiB/s per conn, adaptive count (and fixed -c 16)")
    if b.nginx is None:
        b.skipped.append("row 8: nginx missing")
        return
    out = b.work / "run" / "direct"
    n = ds.n_train
    with NginxServer(ds.mirror, PREFIX, limit_rate=rate) as srv:
        served = Served(srv)
        alone = _fetch_tool(b, "isic2020 --no-extract (download alone)", srv.url, ds,
                            out / "alone", served, ["--no-extract"], images=None,
                            archive=zip_size, extracted=False, status="downloaded")
        both = _fetch_tool(b, "isic2020 (download + extract while downloading)", srv.url, ds,
                           out / "both", served, [], images=n, archive=zip_size,
                           extracted=True, status="downloaded")
        after = _fetch_tool(b, "isic2020 (download, then extract: ISIC2020_STREAM=0)", srv.url,
                            ds, out / "after", served, [], env={"ISIC2020_STREAM": "0"},
                            images=n, archive=zip_size, extracted=True, status="downloaded")
        direct = _fetch_tool(b, "isic2020 --direct", srv.url, ds, out / "direct", served,
                             ["--direct"], images=n, archive=None, extracted=True,
                             status="direct")
        nokeep = _fetch_tool(b, "isic2020 --no-keep-archives (1 run, for its disk)", srv.url,
                             ds, out / "nokeep", served, ["--no-keep-archives"], images=n,
                             archive=None, extracted=True, status="downloaded")
        # The same two at the fixed count the row was first defined with: there the download
        # is slow enough for the unpacking to hide behind it on 2 CPUs.
        alone16 = _fetch_tool(b, "isic2020 -c 16 --no-extract (download alone)", srv.url, ds,
                              out / "alone16", served, ["-c", "16", "--no-extract"],
                              images=None, archive=zip_size, extracted=False,
                              status="downloaded")
        both16 = _fetch_tool(b, "isic2020 -c 16 (download + extract while downloading)",
                             srv.url, ds, out / "both16", served, ["-c", "16"], images=n,
                             archive=zip_size, extracted=True, status="downloaded")
        direct16 = _fetch_tool(b, "isic2020 -c 16 --direct", srv.url, ds, out / "direct16",
                               served, ["-c", "16", "--direct"], images=n, archive=None,
                               extracted=True, status="direct")
        tools = [alone, both, after, direct, alone16, both16, direct16]
        b.log(f"{name}: {', '.join(t.label for t in tools)}; then {nokeep.label}")
        tools = b.run_tools("row 8", tools)
        b.run_tools("row 8", [nokeep], reps=1)
    ideal = zip_size / (16 * rate)
    for t in [*tools, nokeep]:
        r = tgt = ""
        if not t.samples:
            b.add(name, t)
            continue
        eng = t.med_extra("engine_s") or 0.0
        if t is direct or t is direct16:
            ref, ref_both = (alone16, both16) if t is direct16 else (alone, both)
            rr = ratio(t, ref)
            r = fmt_ratio(rr, "download alone" + (" at -c 16" if t is direct16 else ""))
            rb = ratio(t, ref_both)
            if rb is not None:
                r += f"; {rb:.2f}x download + extract"
            tgt = verdict(None if rr is None else rr <= 1.1, "<= 1.1x the download alone")
            notes = f"{eng:.2f} s in-engine (directory + members)"
        elif t is alone or t is alone16:
            notes = f"archive {eng:.2f} s in-engine" + (
                f"; ideal at 16 connections {ideal:.1f} s" if t is alone16 else "")
        else:
            ex = t.med_extra("extract_s")
            tail = t.med_extra("stream_tail_s")
            notes = f"archive {eng:.2f} s in-engine" + (
                f", then extraction {ex:.2f} s" if ex is not None else "")
            if tail is not None:
                notes += (f" ({t.med_extra('streamed'):,.0f} images unpacked while downloading, "
                          f"{tail:.2f} s of it after the last byte)")
            ref = alone16 if t is both16 else alone
            if t in (both, after, both16):
                rr = ratio(t, ref)
                r = fmt_ratio(rr, "download alone" + (" at -c 16" if t is both16 else ""))
            if t is both or t is both16:
                tgt = verdict(None if rr is None else rr <= 1.1, "<= 1.1x the download alone")
        if t is not alone and t is not alone16:
            # What the CPUs allow: the command's CPU seconds spread over every CPU, against the
            # download alone's wall (nginx's own CPU comes on top of this).
            cpus = os.cpu_count() or 1
            floor = t.med("cpu") / cpus
            notes += (f"; its CPU {t.med('cpu'):.1f} s is >= {floor:.1f} s of wall on {cpus} "
                      "CPUs")
        dn = _disk_note(t)
        b.add(name, t, r, tgt, notes + (f"; {dn}" if dn else ""))


#: Row 8b: a zip whose members coalesce into about 3 ranges (8 MiB each), far fewer than the
#: 16 connections, at a lower cap so the transfer, not start-up, is what is timed.
FEW_IMAGES = 1200
FEW_RATE_DIVISOR = 8


def row_direct_few(b: Bench) -> None:
    """``--direct`` when the members coalesce into fewer ranges than connections: the ranges
    must be split across idle connections to come near the whole zip's time."""
    from support.servers import NginxServer

    if b.nginx is None:
        b.skipped.append("row 8b: nginx missing")
        return
    p = dataclasses.replace(b.p, n_train=min(FEW_IMAGES, b.p.n_train),
                            n_test=min(50, b.p.n_test))
    ds = build_image_mirror(b.work, p)
    rate = max(64 * 1024, b.p.direct_rate // FEW_RATE_DIVISOR)
    zip_size = ds.train_zip.stat().st_size
    name = (f"8b --direct, members in ~{-(-zip_size // (8 * MiB))} ranges, vs download alone, "
            f"{human(zip_size)} zip of {ds.n_train:,} images, {rate / MiB:g} MiB/s per conn, "
            "16 conns")
    out = b.work / "run" / "direct-few"
    with NginxServer(ds.mirror, PREFIX, limit_rate=rate) as srv:
        served = Served(srv)
        alone = _fetch_tool(b, "isic2020 --no-extract (download alone)", srv.url, ds,
                            out / "alone", served, ["--no-extract"], images=None,
                            archive=zip_size, extracted=False, status="downloaded")
        direct = _fetch_tool(b, "isic2020 --direct", srv.url, ds, out / "direct", served,
                             ["--direct"], images=ds.n_train, archive=None, extracted=True,
                             status="direct")
        b.log(f"{name}: {alone.label}, {direct.label}")
        tools = b.run_tools("row 8b", [alone, direct])
    ideal = zip_size / (16 * rate)
    for t in tools:
        r = tgt = ""
        eng = t.med_extra("engine_s") or 0.0 if t.samples else 0.0
        notes = f"{eng:.2f} s in-engine; ideal {ideal:.1f} s"
        if t is direct and t.samples:
            rr = ratio(t, alone)
            r = fmt_ratio(rr, "download alone")
            tgt = verdict(None if rr is None else rr <= 1.1, "<= 1.1x the download alone")
        b.add(name, t, r, tgt, notes)
