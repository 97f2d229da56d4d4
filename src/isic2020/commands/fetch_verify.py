"""The closing verify of a fetch, and when it may be skipped.

A fetch ends with the fast ``verify`` of its selection. A complete re-run should cost well under
a second, so the verify is skipped when a cheap fingerprint of everything it looked at last time
(:func:`selection_fingerprint`) is unchanged: only ``fetch`` trusts the fingerprint, and
``isic2020 verify`` always checks everything. While the archives download, the metadata part of
the verify can already run (``MetadataPrecheck``); its result is used only while the CSVs are
unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from isic2020.catalog.manifest import Manifest, expand_split
from isic2020.checks.findings import Check, VerifyReport
from isic2020.checks.verify import MetadataPrecheck, verify_data
from isic2020.errors import DiskError
from isic2020.store.layout import Layout
from isic2020.store.records import Records


def selection_fingerprint(layout: Layout, man: Manifest, split: str, fmt: str) -> str:
    """A cheap digest of everything a verification of this selection looked at.

    Stats of the CSVs and archives, and for each image folder its mtime and entry count: adding,
    removing or renaming an image changes it. Rewriting an image in place does not, which is
    why only ``fetch`` trusts it (to make a complete re-run cost well under a second) and
    ``isic2020 verify`` always checks everything.
    """
    parts: list[Any] = []
    for s in expand_split(split):
        entries = list(man.metadata(s))
        if fmt != "none":
            a = man.archive(s, fmt)
            if a is not None:
                entries.append(a)
            folder = layout.images_dir(fmt, s)
            try:
                st = folder.stat()
                parts.append([str(folder), st.st_mtime_ns, st.st_ino, len(os.listdir(folder))])
            except OSError:
                parts.append([str(folder), None])
        extra = [layout.state_dir / "selections" / f"{s}-{fmt}.json"]
        for path in extra:
            try:
                st = path.stat()
                parts.append([str(path), st.st_size, st.st_mtime_ns])
            except OSError:
                parts.append([str(path), None])
        for e in entries:
            try:
                st = layout.final_path(e).stat()
                parts.append([e.name, st.st_size, st.st_mtime_ns, st.st_ino])
            except OSError:
                parts.append([e.name, None])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()



def verify_if_changed(
    layout: Layout, man: Manifest, records: Records, split: str, fmt: str, progress: bool,
    precheck: MetadataPrecheck | None = None,
    checked: Mapping[Path, Collection[str]] | None = None,
) -> VerifyReport:
    """The fast verify of the selection, or one "unchanged" check when its fingerprint is the
    one recorded after the last verify that passed. ``checked``: images this fetch checked as
    it wrote them, by folder (see :func:`verify_data`)."""
    key = f"{split}:{fmt}"
    fingerprint = selection_fingerprint(layout, man, split, fmt)
    last = records.verified.get(key)
    if last and last.get("fingerprint") == fingerprint:
        if precheck is not None:
            precheck.result()  # not needed, but no thread outlives the fetch
        return _unchanged(layout, split, fmt, last)
    metadata = precheck.result() if precheck is not None else None
    report = verify_data(layout, man, split=split, fmt=fmt, progress=progress,
                         metadata=metadata, checked=checked)
    if report.ok:
        with contextlib.suppress(DiskError):  # only saves the next run a verify: a read-only
            records.put_verified(key, {"fingerprint": fingerprint, "at": time.time()})  # DATA
    return report


def _unchanged(layout: Layout, split: str, fmt: str, last: dict[str, Any]) -> VerifyReport:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.get("at", 0)))
    report = VerifyReport(str(layout.root), split, fmt, False)
    report.checks.append(
        Check(
            "unchanged",
            "ok",
            f"nothing changed since the full check at {when}; "
            "`isic2020 verify` checks everything again",
            {"verified_at": last.get("at")},
        )
    )
    return report
