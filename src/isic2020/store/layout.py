"""Where everything lives under the data directory (fixed: scripts depend on it).

    DATA/metadata/<official CSV names>
    DATA/archives/<official zip names>
    DATA/jpeg/{train,test}/ISIC_xxxxxxx.jpg
    DATA/dicom/{train,test}/ISIC_xxxxxxx.dcm           (corrected DICOM)
    DATA/dicom-original/{train,test}/ISIC_xxxxxxx.dcm
    DATA/.isic2020/                                    state: lock, records, partial downloads,
                                                       images unpacked while their archive downloads

Partial files live in the state folder, on the same filesystem as their final paths, so the
final ``os.replace`` is atomic and nothing half-written ever sits at a final path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from isic2020 import config

STATE_DIRNAME = ".isic2020"


def default_data_dir() -> Path:
    """``$ISIC2020_DATA_DIR``, else ``$XDG_DATA_HOME/isic2020`` (``~/.local/share/isic2020``)."""
    env = config.path(config.DATA_DIR)
    if env is not None:
        return env
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "isic2020"


class Entry(Protocol):
    """What the layout needs of a manifest entry (the store knows nothing of manifests)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def at(cls, data_dir: str | os.PathLike[str] | None) -> Layout:
        root = Path(data_dir).expanduser() if data_dir else default_data_dir()
        return cls(root.absolute())

    @property
    def metadata_dir(self) -> Path:
        return self.root / "metadata"

    @property
    def archives_dir(self) -> Path:
        return self.root / "archives"

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIRNAME

    @property
    def partial_dir(self) -> Path:
        return self.state_dir / "partial"

    @property
    def records_path(self) -> Path:
        return self.state_dir / "records.json"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "lock"

    def images_dir(self, fmt: str, split: str) -> Path:
        return self.root / fmt / split

    def final_path(self, entry: Entry) -> Path:
        base = self.metadata_dir if entry.kind == "metadata" else self.archives_dir
        return base / entry.name

    def partial_path(self, entry: Entry) -> Path:
        return self.partial_dir / (entry.name + ".part")

    def partial_state_path(self, entry: Entry) -> Path:
        return self.partial_dir / (entry.name + ".state.json")

    def staging_dir(self, entry: Entry) -> Path:
        """Images unpacked while ``entry`` downloads wait here until the archive is verified."""
        return self.state_dir / "staging" / entry.name
