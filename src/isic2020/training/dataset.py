"""A map-style dataset over a verified folder: ``len(ds)``, ``ds[i] -> (image, target, meta)``.

It has exactly what ``torch.utils.data.DataLoader`` asks of a map-style dataset
(``__len__`` and ``__getitem__``; it pickles, so worker processes get a copy) without this
package importing torch: nothing here needs it, so the dataset works the same with any
framework, or none.

The samples are :mod:`isic2020.training.samples`' (the same keys, order and metadata rows as
the shards): sorted by image name, only images on disk (an :class:`ImagesMissingWarning` says
how many of the metadata's rows are not), ``fold=k`` keeps fold ``k`` of ``folds.csv``,
``exclude_fold=k`` all the others (the usual validation / training pair), and
``drop_duplicates=True`` drops the second image of each official duplicate pair.

An item is ``(image, target, meta)``: ``image`` a decoded RGB ``PIL.Image`` (or the raw JPEG
bytes with ``decode=False``), passed through ``transform`` when given; ``target`` ``0``/``1``
(``-1`` for the test split, which has no labels, so a batch still collates); ``meta`` the
metadata row (a dict; missing values are ``None``). The file is read when the item is asked
for, and refused with :class:`~isic2020.errors.VerificationError` if it is not a whole JPEG.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from typing import Any

from isic2020.catalog.tables import ImagesMissingWarning
from isic2020.training.samples import Sample, SampleQuery, load_samples, read_image


class ISICDataset:
    """The images of one split of a data directory, as a map-style dataset."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        split: str = "train",
        image_format: str = "jpeg",
        *,
        fold: int | None = None,
        exclude_fold: int | None = None,
        drop_duplicates: bool = False,
        transform: Callable[[Any], Any] | None = None,
        decode: bool = True,
        manifest: str | os.PathLike[str] | None = None,
    ) -> None:
        query = SampleQuery(split, image_format, data_dir, manifest, drop_duplicates, fold,
                            exclude_fold)
        sset = load_samples(query)
        if sset.missing:
            warnings.warn(
                f"{sset.missing} of {sset.rows} {split} images are not in {sset.folder}: the "
                f"dataset leaves them out; run `isic2020 fetch --split {split}` to get them",
                ImagesMissingWarning,
                stacklevel=2,
            )
        self.split = split
        self.folder = sset.folder
        self.samples: list[Sample] = sset.samples
        self.columns = sset.columns
        self.transform = transform
        self.decode = decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int, dict[str, Any]]:
        s = self.samples[i]  # IndexError past the end, as a sequence should
        data = read_image(s)
        image: Any = data
        if self.decode:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                image = im.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        target = -1 if s.target is None else int(s.target)
        return image, target, dict(s.meta)

    @property
    def keys(self) -> list[str]:
        """The image names, in item order."""
        return [s.key for s in self.samples]

    @property
    def targets(self) -> list[int]:
        """Every item's target without reading an image (for samplers and class weights)."""
        return [-1 if s.target is None else int(s.target) for s in self.samples]

    def __repr__(self) -> str:
        return f"ISICDataset({self.split!r}, {len(self)} images from {self.folder})"
