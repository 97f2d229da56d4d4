"""``list``: every manifest entry with its URLs, published size and local state. Reads only.

The state is judged as ``fetch`` judges it (``commands.ondisk``): "verified" only when the
record vouches for the file, so ``list`` never calls done what a fetch would download again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from isic2020.catalog.manifest import FileEntry, Manifest, load_manifest, parse_size
from isic2020.commands.ondisk import partial_bytes, trusted
from isic2020.commands.sources import check_mirrors
from isic2020.report import human_size, readable_repr
from isic2020.store.layout import Layout
from isic2020.store.records import FileRecord, Records
from isic2020.version import __version__


@readable_repr
@dataclass
class ListReport:
    """The rows of ``list`` (``--json``: the ``files`` key)."""

    data_dir: str
    rows: list[dict[str, Any]]
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"isic2020": __version__, "data_dir": self.data_dir, "files": self.rows}

    def summary_lines(self) -> list[str]:
        lines = [f"data directory: {self.data_dir}"]
        for r in self.rows:
            # the bytes here when there are any (a mirror's 23.1 MB file is not "23 GB"),
            # else the size the manifest publishes
            size = (human_size(r["local_bytes"]) if r["local_bytes"] is not None
                    else r["published_size"])
            lines.append(
                f"{r['name']:<40} {r['split']:<5} {r['format']:<15} {size:>8}  {r['state']}"
            )
            for u in r["urls"]:
                lines.append(f"    {u}")
        return lines


def _states(layout: Layout, records: Records, e: FileEntry, rec: FileRecord | None,
            final: Path) -> tuple[list[str], int | None]:
    """The file's states (``["verified", "extracted"]``) and its bytes here (None: none)."""
    size: int | None = None
    if trusted(rec, e, final):
        states, size = ["verified"], rec.size if rec is not None else None
    elif rec is not None and rec.matches_stat(final):
        states = ["present", "not the file the manifest describes"]
    elif final.exists():
        states = ["present", "changed since verified" if rec else "not verified"]
    elif partial_bytes(layout, e):
        size = partial_bytes(layout, e)
        states = [f"partial ({human_size(size)})"]
    else:
        states = ["missing"]
    if size is None and final.is_file():
        size = final.stat().st_size
    if e.is_archive and e.name in records.extracted:
        states.append("extracted")
    return states, size


def list_files(
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | Manifest | None = None,
    mirrors: Sequence[str] = (),
) -> ListReport:
    """Every manifest entry with its URLs, published size and local state. Reads only."""
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    mirror_list = check_mirrors(mirrors)
    layout = Layout.at(data_dir)
    records = Records(layout.records_path)
    rows = []
    for e in man.files:
        final = layout.final_path(e)
        rec = records.file(e.name)
        states, size = _states(layout, records, e, rec, final)
        row = {k: v for k, v in asdict(e).items() if k != "hosts"}
        row.update(
            {
                "published_bytes": parse_size(e.published_size),
                "urls": e.urls(mirror_list),
                "state": ", ".join(states),
                "states": states,
                "local_bytes": size,
                "local_path": str(final),
                "verified": asdict(rec) if rec is not None else None,
            }
        )
        rows.append(row)
    return ListReport(str(layout.root), rows)
