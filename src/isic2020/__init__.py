"""isic2020: the ISIC 2020 Challenge Dataset onto a machine, complete and verified.

The public API mirrors the CLI: ``fetch``, ``list_files``, ``extract``, ``verify`` and the
metadata helpers. Every name is imported on first use (PEP 562), so ``import isic2020`` and
each command load only what they need: ``isic2020 verify`` or ``--version`` never import
``requests`` or pandas, and ``fetch`` not the export's object-store client. ``dir(isic2020)``
lists the API (``__all__``), not the names this module needs to work.
"""

import importlib as _importlib

from isic2020.version import __version__

_LAZY = {
    "verify": "isic2020.checks.verify",
    "export": "isic2020.commands.export",
    "extract": "isic2020.commands.extract",
    "fetch": "isic2020.commands.fetch",
    "list_files": "isic2020.commands.listing",
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

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'isic2020' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
