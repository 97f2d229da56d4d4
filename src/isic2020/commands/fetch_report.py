"""What a fetch reports: one :class:`FileOutcome` per file, gathered in a :class:`FetchReport`.

``FetchReport.to_dict()`` is the ``fetch --json`` document (the CLI adds its envelope);
``summary_lines()`` the human summary. Sizes are integer bytes in JSON and human sizes in text
(``report.human_size``). The exit code is 1 when the closing verification failed, else 0:
everything else that can go wrong is raised, not reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from isic2020.errors import EXIT_OK, EXIT_VERIFY
from isic2020.report import human_size, plural, readable_repr
from isic2020.transfer.model import DownloadResult
from isic2020.version import __version__


@dataclass
class FileOutcome:
    """One file of a fetch: the download result plus what happened after it."""

    result: DownloadResult | None
    name: str
    status: str
    extraction: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.result is not None:
            d.update(self.result.to_dict())
            d["status"] = self.status
        if self.extraction is not None:
            d["extraction"] = self.extraction
        return d


@readable_repr
@dataclass
class FetchReport:
    """One fetch: its files, the closing verification, or (``dry_run``) the rows of what it
    would do."""

    data_dir: str
    split: str
    format: str
    files: list[FileOutcome] = field(default_factory=list)
    verification: Any = None
    seconds: float = 0.0
    dry_run: list[dict[str, Any]] | None = None

    @property
    def exit_code(self) -> int:
        if self.verification is not None and getattr(self.verification, "exit_code", 0):
            return EXIT_VERIFY
        return EXIT_OK

    @property
    def bytes_transferred(self) -> int:
        return sum(f.result.bytes_transferred for f in self.files if f.result is not None)

    @property
    def repaired(self) -> int:
        """Images restored by byte ranges from the remote zip (``commands.repair``)."""
        return sum(int((f.extraction or {}).get("repaired", 0)) for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "isic2020": __version__,
            "command": "fetch",
            "data_dir": self.data_dir,
            "split": self.split,
            "format": self.format,
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "bytes_transferred": self.bytes_transferred,
            "repaired": self.repaired,
            "files": [f.to_dict() for f in self.files],
        }
        if self.dry_run is not None:
            d["dry_run"] = self.dry_run
        if self.verification is not None:
            d["verification"] = self.verification.to_dict()
        return d

    def summary_lines(self) -> list[str]:
        if self.dry_run is not None:
            from isic2020.commands.dryrun import dry_run_lines

            return dry_run_lines(self.dry_run)
        lines = []
        for f in self.files:
            extra = ""
            repaired = int((f.extraction or {}).get("repaired", 0))
            if repaired:
                extra += f" ({plural(repaired, 'image')} repaired)"
            if f.result is not None and f.result.bytes_transferred:
                extra = f" ({human_size(f.result.bytes_transferred)} transferred)"
            lines.append(f"{f.name}: {f.status}{extra}")
        if self.verification is not None:
            lines.extend(self.verification.summary_lines())
        lines.append(
            f"{'ok' if self.exit_code == 0 else 'FAILED'}: {self.data_dir} "
            f"({human_size(self.bytes_transferred)} transferred in {self.seconds:.1f}s)"
        )
        return lines

