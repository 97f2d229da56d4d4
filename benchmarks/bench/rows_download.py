"""Rows 1 and 2: downloads against aria2c and curl."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .common import MB, PREFIX, TRAIN_ZIP, MiB
from .data import build_download_mirror, human
from .download_tools import download_tools
from .isic import isic, isic_env
from .results import Bench, Tool, find, fmt_ratio, ratio, verdict


def row_throttled(b: Bench) -> None:
    from support.servers import NginxServer

    name = f"1 throttled download {human(b.p.archive_bytes)}, {b.p.rate / MiB:.0f} MiB/s per conn"
    if b.nginx is None:
        b.skipped.append("row 1: nginx missing")
        return
    mirror, manifest = build_download_mirror(b.work, b.p.archive_bytes)
    with NginxServer(mirror, PREFIX, limit_rate=b.p.rate) as srv:
        conns = b.p.connections
        aria = [c for c in (8, 16) if c in conns or c == 16] if not b.p.quick else [8]
        tools = download_tools(b, srv.url, mirror, manifest, b.p.archive_bytes, "throttled",
                               conns, aria)
        b.log(f"{name}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 1", tools)
    curl = find(tools, "curl")
    ideal = b.p.archive_bytes / b.p.rate
    for t in tools:
        r, tgt = "", ""
        if t.label.startswith("isic2020"):
            c = int(t.label.split("-c")[1])
            peer = find(tools, f"aria2c -x{c} -s{c}")
            if peer is not None:
                rr = ratio(t, peer)
                r = fmt_ratio(rr, peer.label)
                tgt = verdict(rr is not None and rr <= 1.05, "<= 1.05x aria2c")
            elif c == 1 and curl is not None:
                r = fmt_ratio(ratio(t, curl), "curl")
            tgt = tgt or ""
            eng = t.med_extra("engine_s")
            notes = (f"archive alone {eng:.2f} s in-engine; ideal {ideal / c:.2f} s"
                     if eng is not None else "")
        else:
            n = 1 if t.label == "curl" else int(t.label.split("-x")[1].split()[0])
            notes = f"ideal {ideal / n:.2f} s"
        b.add(name, t, r, tgt, notes)


def row_unthrottled(b: Bench, parts: Iterable[str] = ("2a", "2b", "2c")) -> None:
    """Row 2: ``parts`` of it, 2a (nginx), 2b (FaultServer, MD5 ETag), 2c (CPU ratio)."""
    from support.servers import NginxServer

    from .rows_cpu import row_cpu_ratio

    parts = set(parts)

    size = b.p.archive_bytes
    name = f"2 unthrottled download {human(size)} (nginx, sha256 pinned)"
    if b.nginx is None:
        b.skipped.append("row 2 (nginx part): nginx missing")
    mirror, manifest = build_download_mirror(b.work, size)
    small = max(size // 10, MiB)
    s_mirror, s_manifest = build_download_mirror(b.work, small)
    if b.nginx is not None and "2a" in parts:
        with NginxServer(mirror, PREFIX) as srv, NginxServer(s_mirror, PREFIX) as srv_small:
            tools = download_tools(b, srv.url, mirror, manifest, size, "nginx",
                                   (8, 16) if not b.p.quick else (8,),
                                   (8, 16) if not b.p.quick else (8,), aria_checksum=True,
                                   curl_sync=True)
            small_t = download_tools(b, srv_small.url, s_mirror, s_manifest, small,
                                     "nginx-small", (8,), (), curl=False)[0]
            small_t.label = f"isic2020 -c8 ({human(small)} archive)"
            tools.append(small_t)
            # the fixed cost every isic2020 row pays before its first byte (the interpreter,
            # the imports, click): measured in the same run, so the floor below is this run's
            startup = Tool("isic2020 --version (start-up)", lambda rep: isic("--version"),
                           is_isic=True, env=isic_env(manifest))
            tools.append(startup)
            b.log(f"{name}: {', '.join(t.label for t in tools)}")
            tools = b.run_tools("row 2", tools)
        curl = find(tools, "curl")
        synced = find(tools, "curl && sync")
        for t in tools:
            r = tgt = notes = ""
            mbps = size / t.med("wall") / MB if t.samples else 0
            if t is small_t:
                notes = "same download at 1/10 of the size: RSS must not grow with size"
                b.add(name, t, "", "", notes)
                continue
            if t is startup:
                notes = "no download: the interpreter, imports and click of every isic2020 run"
                b.add(name, t, "", "", notes)
                continue
            if t.label.startswith("isic2020"):
                rr = ratio(t, curl)
                r = fmt_ratio(rr, "curl")
                tgt = verdict(None if rr is None else rr <= 2.0, ">= 50% of curl's throughput")
                c = t.label.split("-c")[1]
                a = find(tools, f"aria2c -x{c} -s{c}")
                ra = ratio(t, a)
                if a is not None and ra is not None:
                    r += f"; {ra:.2f}x {a.label}"
                rs = ratio(t, synced)
                if rs is not None:  # the same durability: isic2020 fsyncs before the rename
                    r += f"; {rs:.2f}x curl && sync"
                chk = t.samples[0].extra.get("etag_check", "?") if t.samples else "?"
                notes = f"{mbps:.0f} MB/s; checks: size + {chk}"
                if curl is not None and synced is not None and startup.samples:
                    disk = synced.med("wall")
                    floor = startup.med("wall") + max(curl.med("wall"), disk - curl.med("wall"))
                    notes += (f"; durable floor here {floor:.2f} s (start-up + the larger of "
                              f"curl's download and the disk's write of it, curl && sync - curl)")
            else:
                notes = f"{mbps:.0f} MB/s" + ("; verifies sha256 after" if "checksum" in t.label
                                              else "; verifies nothing")
            b.add(name, t, r, tgt, notes)
        nginx_curl = find(tools, "curl")
    else:
        nginx_curl = None

    if "2b" in parts:
        row_fault_md5(b, mirror, manifest, size, nginx_curl)
    if "2c" in parts:
        row_cpu_ratio(b, mirror, manifest, size)


def row_fault_md5(b: Bench, mirror: Path, manifest: Path, size: int,
                  nginx_curl: Tool | None) -> None:
    """Row 2b: the same download with an S3-like MD5 ETag from the FaultServer (pure Python,
    in this process); ``nginx_curl`` (row 2a's curl) shows whether that server limits curl."""
    from support.servers import FaultServer

    name2 = f"2b unthrottled download {human(size)} (FaultServer, MD5 ETag + sha256)"
    with FaultServer(mirror, PREFIX, etag="md5") as fsrv:
        fsrv.etag_for(TRAIN_ZIP)  # hash once before timing (the server caches it)
        tools = download_tools(b, fsrv.url, mirror, manifest, size, "fault",
                               (8,), (8,) if not b.p.quick else ())
        b.log(f"{name2}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 2b", tools)
    curl = find(tools, "curl")
    for t in tools:
        r = tgt = notes = ""
        mbps = size / t.med("wall") / MB if t.samples else 0
        if t.label.startswith("isic2020"):
            rr = ratio(t, curl)
            r = fmt_ratio(rr, "curl")
            tgt = verdict(None if rr is None else rr <= 2.0, ">= 50% of curl's throughput")
            chk = t.samples[0].extra.get("etag_check", "?") if t.samples else "?"
            notes = f"{mbps:.0f} MB/s; checks: size + sha256 + ETag {chk}"
        else:
            notes = f"{mbps:.0f} MB/s"
            ref = nginx_curl if t.label == "curl" else None
            if ref is not None and t.samples:
                notes += (f" (from nginx: {size / ref.med('wall') / MB:.0f} MB/s: the Python "
                          f"server {'is' if t.med('wall') > 1.2 * ref.med('wall') else 'is not'}"
                          " the bottleneck)")
        b.add(name2, t, r, tgt, notes)
