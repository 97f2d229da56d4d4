"""Row 2c: CPU per verified byte, against the irreducible work of the same check.

What a verified download cannot avoid: receiving the bytes and writing them (curl's CPU for
the same download) plus one MD5 pass and one SHA-256 pass over them (``openssl md5``,
``openssl sha256``, the fastest hash code on the machine). The row is isic2020's CPU (user +
sys from ``wait4``, its start-up included) over the sum of those three, for an S3-style
single-part ETag (MD5 of the object) and a multipart one (MD5 of the parts' MD5s), each
served by the FaultServer with the sha256 pinned by the manifest. CPU time, not wall time:
it is what other load on the machine disturbs least. The tools run alternately, medians.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .common import MB, PREFIX, TRAIN_ZIP
from .data import human
from .download_tools import download_tools
from .results import Bench, Tool, find, verdict

#: Goal 1 of issue 14: isic2020's CPU at most this many times the irreducible.
TARGET = 1.3


def openssl_tools(path: Path, size: int) -> list[Tool]:
    """One MD5 and one SHA-256 pass over ``path`` (in the page cache, as during a download)."""
    if shutil.which("openssl") is None:
        return []
    return [Tool(f"openssl {alg}", lambda rep, a=alg: ["openssl", a, str(path)],
                 work_bytes=size) for alg in ("md5", "sha256")]


def row_cpu_ratio(b: Bench, mirror: Path, manifest: Path, size: int) -> None:
    from support.servers import FaultServer

    for mode in ("md5", "multipart"):
        name = f"2c CPU per verified byte {human(size)} ({mode} ETag + sha256)"
        if shutil.which("openssl") is None or shutil.which("curl") is None:
            b.skipped.append(f"{name}: curl or openssl missing")
            return
        with FaultServer(mirror, PREFIX, etag=mode) as srv:
            srv.etag_for(TRAIN_ZIP)  # hashed once before timing (the server caches it)
            tools = download_tools(b, srv.url, mirror, manifest, size, f"cpu-{mode}", (8,), ())
            tools += openssl_tools(mirror / TRAIN_ZIP, size)
            b.log(f"{name}: {', '.join(t.label for t in tools)}")
            tools = b.run_tools(name.split(" ")[0], tools)
        add_ratio_rows(b, name, tools, size)


def add_ratio_rows(b: Bench, name: str, tools: list[Tool], size: int) -> None:
    peers = [find(tools, label) for label in ("curl", "openssl md5", "openssl sha256")]
    floor = sum(t.med("cpu") for t in peers if t is not None) if all(peers) else None
    curl = peers[0]
    for t in tools:
        if not t.label.startswith("isic2020"):
            b.add(name, t, "", "", f"cpu {t.med('cpu'):.2f} s" if t.samples else "")
            continue
        cpu = t.med("cpu") if t.samples else None
        r = cpu / floor if cpu is not None and floor else None
        tgt = verdict(None if r is None else r <= TARGET,
                      f"CPU <= {TARGET}x curl + openssl md5 + openssl sha256")
        notes = ""
        if r is not None and floor is not None and curl is not None:
            mbps = size / t.med("wall") / MB
            share = curl.med("wall") / t.med("wall")
            notes = (f"cpu {cpu:.2f} s vs {floor:.2f} s (curl {curl.med('cpu'):.2f} + hashes); "
                     f"{mbps:.0f} MB/s = {share:.0%} of curl's throughput "
                     f"({'yes' if share >= 0.5 else 'NO'}: >= 50%)")
        b.add(name, t, "" if r is None else f"{r:.2f}x CPU of curl+md5+sha256", tgt, notes)
