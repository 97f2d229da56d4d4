"""isic2020: the ISIC 2020 Challenge Dataset onto a machine, complete and verified.

The public API mirrors the CLI: ``fetch``, ``list_files``, ``extract``, ``verify`` and the
metadata helpers. The functions named like their modules are imported eagerly (otherwise
``isic2020.fetch`` could be the module, depending on import order); the rest lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .export import export  # noqa: E402
from .extract import extract  # noqa: E402
from .fetch import fetch, list_files  # noqa: E402
from .verify import verify  # noqa: E402

_LAZY = {
    "load_metadata": "isic2020.dataset",
    "ImagesMissingWarning": "isic2020.dataset",
    "make_folds": "isic2020.folds",
    "assign_folds": "isic2020.folds",
    "compute_stats": "isic2020.stats",
    "load_manifest": "isic2020.manifest",
    "build_dataset": "isic2020.synthetic",
    "Isic2020Error": "isic2020.errors",
}

__all__ = ["__version__", "export", "extract", "fetch", "list_files", "verify", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'isic2020' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
