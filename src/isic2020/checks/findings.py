"""What a verification finds: one :class:`Check` per property, gathered in a :class:`VerifyReport`.

Why a module of its own: the metadata, file and image checks each return ``Check`` objects and
the entry (``verify``) gathers them, so the records sit below all four. A finding never raises:
``status`` says ok / failed / warning and ``problems`` lists every offender (the text summary
shows the first few, ``--json`` all of them), so one run reports everything that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from isic2020.report import readable_repr

SHOW = 5  # names shown per problem list in the text summary


@dataclass
class Check:
    """One verified property."""

    name: str
    status: str  # "ok", "failed", "warning"
    message: str
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "figures": self.figures,
            "problems": self.problems,
        }


@readable_repr
@dataclass
class VerifyReport:
    """Every check of one ``verify`` run; ``exit_code`` 1 when any failed (warnings do not)."""

    data_dir: str
    split: str
    format: str
    deep: bool
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    #: The ``isic2020 fetch`` that restores what is missing or damaged (None: not known).
    repair: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "verify",
            "data_dir": self.data_dir,
            "split": self.split,
            "format": self.format,
            "deep": self.deep,
            "ok": self.ok,
            "status": "ok" if self.ok else "failed",
            "checks": [c.to_dict() for c in self.checks],
            "failed": [c.name for c in self.failed()],
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
            "repair": None if self.ok else self.repair,
        }

    def advice(self) -> str:
        """What to do about the failed checks: the fetch that repairs them (it restores
        missing images and those of another size than the zip's; one of the right size with
        changed bytes must be deleted first), and the extra files, which nothing deletes."""
        failed = self.failed()
        if self.repair is None:
            return "replace what is damaged (delete it and run `isic2020 fetch`)"
        damaged = any(c.name.endswith(("/integrity", "/decode")) for c in failed)
        extra = any(c.name.endswith("/names") and c.figures.get("extra") for c in failed)
        missing = any(not c.name.endswith("/names") or c.figures.get("missing") for c in failed)
        parts = []
        if missing or damaged:
            parts.append(("delete the damaged images it names, then " if damaged else "")
                         + f"repair with `{self.repair}`")
        if extra:
            parts.append("move the extra files out of the image folder (nothing deletes them)")
        return "; ".join(parts) or f"repair with `{self.repair}`"

    def summary_lines(self) -> list[str]:
        mode = "deep" if self.deep else "fast"
        n_fail = len(self.failed())
        n_warn = sum(c.status == "warning" for c in self.checks)
        head = (
            f"verify {self.data_dir} (split {self.split}, format {self.format}, {mode}): "
            + ("OK" if self.ok else f"FAILED ({n_fail} of {len(self.checks)} checks)")
            + (f", {n_warn} warning(s)" if n_warn else "")
            + f" in {self.seconds:.1f} s"
        )
        lines = [head]
        for c in self.checks:
            lines.append(f"  {c.status:<7} {c.name}: {c.message}")
            if c.status != "ok" and c.problems:
                for p in c.problems[:SHOW]:
                    lines.append(f"            {p}")
                if len(c.problems) > SHOW:
                    lines.append(f"            ... and {len(c.problems) - SHOW} more (see --json)")
        return lines
