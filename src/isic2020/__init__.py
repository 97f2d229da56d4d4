"""isic2020: the ISIC 2020 Challenge Dataset onto a machine, complete and verified.

The public API mirrors the CLI: ``fetch``, ``list_files``, ``extract``, ``verify`` and the
metadata helpers. The functions named like their modules are imported eagerly (otherwise
``isic2020.commands.fetch`` could be the module, depending on import order); the rest lazily,
so ``import isic2020`` stays cheap (no pandas). ``dir(isic2020)`` lists the API (``__all__``),
not the names this module needs to work.
"""

import importlib as _importlib

from isic2020.checks.verify import verify
from isic2020.commands.export import export
from isic2020.commands.extract import extract
from isic2020.commands.fetch import fetch
from isic2020.commands.listing import list_files
from isic2020.version import __version__

_LAZY = {
    "load_metadata": "isic2020.catalog.tables",
    "ImagesMissingWarning": "isic2020.catalog.tables",
    "make_folds": "isic2020.commands.folds",
    "assign_folds": "isic2020.commands.folds",
    "compute_stats": "isic2020.commands.stats",
    "load_manifest": "isic2020.catalog.manifest",
    "build_dataset": "isic2020.synthetic",
    "resize": "isic2020.commands.resize",
    "Isic2020Error": "isic2020.errors",
    "ISICDataset": "isic2020.training.dataset",
    "status": "isic2020.commands.status",
    "clean": "isic2020.commands.clean",
    "checksums": "isic2020.commands.checksums",
    "verify_against": "isic2020.checks.against",
    "pin": "isic2020.commands.pin",
    "mirror": "isic2020.commands.mirror",
}

__all__ = ["__version__", "export", "extract", "fetch", "list_files", "verify", *_LAZY]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'isic2020' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
