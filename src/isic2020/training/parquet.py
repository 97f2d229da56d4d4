"""Parquet shards in Hugging Face ``datasets``' Image encoding, written a row group at a time.

Columns: ``image`` (``struct<bytes: binary, path: string>``: the JPEG bytes as verified and
the file name, which is how ``datasets.Image`` stores an image), then the metadata row's
columns (Kaggle's names, ``lesion_id``, ``fold`` when the folds exist). The schema metadata
carries the ``huggingface`` entry (``{"info": {"features": ...}}``), so
``datasets.load_dataset("parquet", ...)`` gives an ``Image`` feature, not a plain struct.

Memory stays flat: rows are gathered into a row group until its image bytes reach
:data:`ROW_GROUP_BYTES` (or :data:`ROW_GROUP_ROWS` rows), then written and dropped. The bound
is small because pyarrow holds several copies of a row group while writing it (the encoded
pages, the column chunk, the ``bytes`` handed to the hashing file), so the peak is a few times
the row group over the process' baseline, whatever the shard or dataset size. The image bytes
are read straight into the one buffer the binary column is made of (no list of ``bytes``, no
second copy). No compression (JPEG does not compress; the metadata is a few bytes per row),
no dictionary and no statistics for the image column. pyarrow is imported only here and only
when a shard is written: it is an optional extra (``isic2020[training]``).
"""

from __future__ import annotations

import array
import json
from typing import Any

from isic2020.errors import UsageError
from isic2020.training.samples import Sample, stream_image
from isic2020.training.shards import HashingWriter

ROW_GROUP_BYTES = 4 * 10**6
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
        with pq.ParquetWriter(sink, sch, compression="none", write_statistics=self.columns,
                              use_dictionary=self.columns) as w:
            group = RowGroup()
            for s in samples:
                group.add(s)
                if group.held >= ROW_GROUP_BYTES or len(group.rows) >= ROW_GROUP_ROWS:
                    w.write_table(self._table(sch, group), row_group_size=len(group.rows))
                    group = RowGroup()
            if group.rows:
                w.write_table(self._table(sch, group), row_group_size=len(group.rows))

    def _table(self, sch: Any, group: RowGroup) -> Any:
        pa = require_pyarrow()
        image_type = sch.field("image").type
        rows = group.rows
        image = pa.StructArray.from_arrays(
            [group.images(pa), pa.array([f"{s.key}.jpg" for s in rows], pa.string())],
            fields=[image_type.field(i) for i in range(image_type.num_fields)],
        )
        cols = [image] + [
            pa.array([s.meta.get(c) for s in rows], sch.field(c).type) for c in self.columns
        ]
        return pa.Table.from_arrays(cols, schema=sch)


class RowGroup:
    """One row group's samples and their image bytes, read straight into one buffer (the
    binary column's data, shared with pyarrow without a copy), checked as they are read."""

    def __init__(self) -> None:
        self.rows: list[Sample] = []
        self.data = bytearray()
        self.offsets = array.array("i", [0])
        self._chunk = bytearray(1 << 18)

    @property
    def held(self) -> int:
        return len(self.data)

    def add(self, sample: Sample) -> None:
        stream_image(sample, self)
        self.rows.append(sample)
        self.offsets.append(len(self.data))

    def buffer(self) -> bytearray:
        return self._chunk

    def write_buffer(self, buf: bytearray, n: int) -> None:
        self.data += memoryview(buf)[:n]

    def images(self, pa: Any) -> Any:
        """The ``bytes`` column (int32 offsets: a row group stays far below 2 GiB)."""
        return pa.Array.from_buffers(pa.binary(), len(self.rows),
                                     [None, pa.py_buffer(self.offsets), pa.py_buffer(self.data)])
