"""``list``: every manifest entry with its URLs, published size and local state. Reads only.

The state is judged as ``fetch`` judges it (``commands.ondisk``): "verified" only when the
record vouches for the file, so ``list`` never calls done what a fetch would download again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from isic2020.catalog.manifest import Manifest, load_manifest
from isic2020.commands.ondisk import partial_bytes, trusted
from isic2020.commands.sources import check_mirrors
from isic2020.report import human_size
from isic2020.store.layout import Layout
from isic2020.store.records import Records
from isic2020.version import __version__


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
            lines.append(
                f"{r['name']:<40} {r['split']:<5} {r['format']:<15} "
                f"{r['published_size']:>8}  {r['state']}"
            )
            for u in r["urls"]:
                lines.append(f"    {u}")
        return lines


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
        if trusted(rec, e, final):
            state = "verified"
        elif rec is not None and rec.matches_stat(final):
            state = "present, not the file the manifest describes"
        elif final.exists():
            state = "present, changed since verified" if rec else "present, not verified"
        elif partial_bytes(layout, e):
            state = f"partial ({human_size(partial_bytes(layout, e))})"
        else:
            state = "missing"
        if e.is_archive and e.name in records.extracted:
            state += ", extracted"
        row = {k: v for k, v in asdict(e).items() if k != "hosts"}
        row.update(
            {
                "urls": e.urls(mirror_list),
                "state": state,
                "local_path": str(final),
                "verified": asdict(rec) if rec is not None else None,
            }
        )
        rows.append(row)
    return ListReport(str(layout.root), rows)
