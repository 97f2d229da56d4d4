"""The download contenders every download row runs: ``isic2020 -cN``, ``aria2c -xN`` (with and
without its sha-256 check), ``curl`` and ``curl && sync``, each with its fresh folder and the
check of its result (one module: rows 1, 2 and 2c share it)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from .common import TRAIN_ZIP
from .data import sha256_file
from .harness import Sample, rmtree
from .isic import archive_entry, check_file, fetch_report, isic, isic_env
from .results import Bench, Tool


def download_tools(b: Bench, url_base: str, mirror: Path, manifest: Path, size: int,
                   tag: str, isic_conns: Sequence[int], aria_conns: Sequence[int],
                   aria_checksum: bool = False, curl: bool = True,
                   curl_sync: bool = False) -> list[Tool]:
    out = b.work / "run" / tag
    sha = sha256_file(mirror / TRAIN_ZIP) if aria_checksum else ""
    url = url_base + TRAIN_ZIP
    tools: list[Tool] = []

    def fresh(d: Path) -> Callable[[int], None]:
        def f(rep: int) -> None:
            rmtree(d)
            d.mkdir(parents=True)
        return f

    for c in isic_conns:
        d = out / f"isic-c{c}"

        def after(rep: int, s: Sample, d: Path = d) -> None:
            doc = fetch_report(s)
            entry = archive_entry(doc)
            check_file(d / "archives" / TRAIN_ZIP, size)
            s.extra["engine_s"] = entry["seconds"]
            s.extra["etag_check"] = entry["etag_check"]
            s.extra["bytes"] = doc["bytes_transferred"]
            rmtree(d)

        tools.append(Tool(
            f"isic2020 -c{c}", lambda rep, d=d, c=c: isic(
                "fetch", "--split", "train", "--format", "jpeg", "--no-extract", "--json",
                "--quiet", "--connections", str(c), "--mirror", url_base, "--data-dir", str(d)),
            is_isic=True, env=isic_env(manifest, b.p.chunk_size), before=fresh(d), after=after,
            work_bytes=size,
        ))
    if shutil.which("aria2c"):
        for c in aria_conns:
            for checksum in ([False, True] if aria_checksum else [False]):
                d = out / f"aria-x{c}{'-sha' if checksum else ''}"
                argv = ["aria2c", f"-x{c}", f"-s{c}", "--file-allocation=falloc",
                        "--allow-overwrite=true", "--auto-file-renaming=false",
                        "--console-log-level=error", "--summary-interval=0",
                        "--download-result=hide", "-q", "-d", str(d), "-o", TRAIN_ZIP]
                if checksum:
                    argv.append(f"--checksum=sha-256={sha}")
                argv.append(url)

                def after_a(rep: int, s: Sample, d: Path = d) -> None:
                    check_file(d / TRAIN_ZIP, size)
                    rmtree(d)

                label = f"aria2c -x{c} -s{c}" + (" --checksum=sha-256" if checksum else "")
                tools.append(Tool(label, lambda rep, argv=argv: argv, before=fresh(d),
                                  after=after_a, work_bytes=size))
    if curl and shutil.which("curl"):
        for with_sync in ([False, True] if curl_sync else [False]):
            d = out / ("curl-sync" if with_sync else "curl")

            def after_c(rep: int, s: Sample, d: Path = d) -> None:
                check_file(d / TRAIN_ZIP, size)
                rmtree(d)

            argv = ["curl", "-sS", "--fail", "-o", str(d / TRAIN_ZIP), url]
            if with_sync:  # isic2020 fsyncs before the rename: the same durability
                argv = ["sh", "-c", " ".join(f"'{a}'" for a in argv) + " && sync"]
            tools.append(Tool("curl && sync" if with_sync else "curl", lambda rep, a=argv: a,
                              before=fresh(d), after=after_c, work_bytes=size))
    return tools
