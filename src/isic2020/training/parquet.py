"""Parquet shards in Hugging Face ``datasets``' Image encoding, written a row group at a time.

Columns: ``image`` (``struct<bytes: binary, path: string>``: the JPEG bytes as verified and
the file name, which is how ``datasets.Image`` stores an image), then the metadata row's
columns (Kaggle's names, ``lesion_id``, ``fold`` when the folds exist). The schema metadata
carries the ``huggingface`` entry (``{"info": {"features": ...}}``), so
``datasets.load_dataset("parquet", ...)`` gives an ``Image`` feature, not a plain struct.

Memory stays flat: rows are gathered into a row group until its image bytes reach
:data:`ROW_GROUP_BYTES` (or :data:`ROW_GROUP_ROWS` rows), then written and dropped. No
compression (JPEG does not compress; the metadata is a few bytes per row) and no statistics for
the image column. pyarrow is imported only here and only when a shard is written: it is an
optional extra (``isic2020[training]``).
"""

from __future__ import annotations

import json
from typing import Any

from isic2020.errors import UsageError
from isic2020.training.samples import Sample, read_image
from isic2020.training.shards import HashingWriter

ROW_GROUP_BYTES = 16 * 10**6
ROW_GROUP_ROWS = 1000
INT_COLUMNS = {"age_approx", "target", "fold"}


def require_pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError(
            "the parquet layout needs pyarrow, which is not installed",
            "install it with `pip install 'isic2020[training]'`",
        ) from None
    return pa


def features(columns: list[str]) -> dict[str, Any]:
    """The ``datasets`` features of the columns (image first)."""
    out: dict[str, Any] = {"image": {"_type": "Image"}}
    for c in columns:
        out[c] = {"dtype": "int64" if c in INT_COLUMNS else "string", "_type": "Value"}
    return out


def schema(columns: list[str]) -> Any:
    pa = require_pyarrow()
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field("image", image)] + [
        pa.field(c, pa.int64() if c in INT_COLUMNS else pa.string()) for c in columns
    ]
    meta = {"huggingface": json.dumps({"info": {"features": features(columns)}})}
    return pa.schema(fields, metadata=meta)


class ParquetFormat:
    """One Parquet file per shard; ``columns`` is the metadata row's column order."""

    ext = "parquet"

    def __init__(self, columns: list[str]) -> None:
        self.columns = list(columns)
        self.recipe = "parquet-hf-image-1:" + ",".join(self.columns)

    def cost(self, sample: Sample) -> int:
        return sample.size + 64 * len(self.columns)

    def write(self, out: HashingWriter, samples: list[Sample]) -> None:
        pa = require_pyarrow()
        import pyarrow.parquet as pq

        sch = schema(self.columns)
        sink = pa.PythonFile(out, mode="w")
        stats = [c for c in self.columns]
        with pq.ParquetWriter(sink, sch, compression="none", write_statistics=stats) as w:
            rows: list[Sample] = []
            images: list[bytes] = []
            held = 0
            for s in samples:
                data = read_image(s)
                rows.append(s)
                images.append(data)
                held += len(data)
                if held >= ROW_GROUP_BYTES or len(rows) >= ROW_GROUP_ROWS:
                    w.write_table(self._table(sch, rows, images), row_group_size=len(rows))
                    rows, images, held = [], [], 0
            if rows:
                w.write_table(self._table(sch, rows, images), row_group_size=len(rows))

    def _table(self, sch: Any, rows: list[Sample], images: list[bytes]) -> Any:
        pa = require_pyarrow()
        cols: dict[str, Any] = {
            "image": [{"bytes": b, "path": f"{s.key}.jpg"} for s, b in zip(rows, images)]
        }
        for c in self.columns:
            cols[c] = [s.meta.get(c) for s in rows]
        return pa.Table.from_pydict(cols, schema=sch)
