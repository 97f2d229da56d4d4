"""Sharded, resumable, deterministic exports: the plan, the index, the skip rule.

One split's samples (sorted by key) are cut into shards in order, a new shard starting when
the next sample would take the current one past ``shard_size`` (a shard has at least one
sample). The cut depends only on the samples' sizes and metadata, never on timing, so the same
input gives the same shards; each format (:class:`ShardFormat`) writes its shard from the
samples alone, so their bytes are the same too.

The index (``isic2020-index.json`` in DEST) lists every finished shard with its sample count,
byte size, sha256, first and last key and ``plan``: a digest of what went into it (keys, image
sizes, metadata, the format's recipe). It is rewritten after every shard, so after a kill or a
full disk it describes exactly the shards that are finished. A re-run skips a shard whose plan
is unchanged and whose file is there with the index's size and sha256 (where the destination
can tell a digest cheaply); anything else is written again. Shards of ours that are no longer
in the plan (fewer shards after a change) are removed once the split is complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Protocol

from isic2020.errors import UsageError
from isic2020.training.destination import INDEX_NAME, SHARD_RE, Destination
from isic2020.training.samples import Sample, SampleSet
from isic2020.version import __version__

DEFAULT_SHARD_SIZE = 256 * 10**6
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KI": 2**10, "MI": 2**20, "GI": 2**30}


def parse_shard_size(text: str | int) -> int:
    """``256MB``, ``256M``, ``1GiB``, ``500000``: bytes (at least 1)."""
    if isinstance(text, int):
        value = text
    else:
        t = text.strip().upper().removesuffix("B")
        num = t.rstrip("KMGI")
        unit = t[len(num):]
        try:
            value = int(float(num) * _UNITS[unit])
        except (ValueError, KeyError):
            value = 0
    if value < 1:
        raise UsageError(f"bad shard size {text!r}", "give bytes or a size such as 256MB or 1GB")
    return value


class HashingWriter:
    """A write-only file that gathers bytes into large chunks, hashes and writes each once.

    Small members (tar headers, JSON, padding) and image bytes land in one reused buffer:
    images are read straight into its free part (:meth:`buffer`, :meth:`write_buffer`), so a
    sample costs no memory of its own and the file sees one ``write`` per :data:`CHUNK`, not a
    few per member. Each full chunk is hashed and written; with ``overlap`` the hash of one
    chunk runs in a helper thread while the chunk is written (both release the GIL, so on two
    cores hashing costs no wall time), with two buffers and at most one chunk being hashed, in
    order: the digest is the same either way. Also a file for pyarrow (``write``, ``tell``,
    ``flush``, ``close``). :meth:`hexdigest` writes what is pending first.
    """

    closed = False
    CHUNK = 1 << 20
    #: :meth:`buffer` never hands out less room than this (the chunk is flushed first).
    MIN_ROOM = 1 << 16

    def __init__(self, fh: BinaryIO, overlap: bool = True) -> None:
        self.fh = fh
        self.written = 0
        self._digest = hashlib.sha256()
        self._buffers = [bytearray(self.CHUNK), bytearray(self.CHUNK)] if overlap else [
            bytearray(self.CHUNK)]
        self._current = 0
        self._fill = 0
        self._pool: ThreadPoolExecutor | None = None
        self._hashing: Future[None] | None = None

    def buffer(self) -> memoryview:
        """Free room in the chunk (at least :data:`MIN_ROOM`): fill it, then give the count
        to :meth:`write_buffer`."""
        if self.CHUNK - self._fill < self.MIN_ROOM:
            self._flush_chunk()
        return memoryview(self._buffers[self._current])[self._fill :]

    def write_buffer(self, buf: bytearray | memoryview, n: int) -> None:
        """Take ``n`` bytes put at the start of the room :meth:`buffer` gave."""
        self._fill += n
        self.written += n

    def write(self, data: bytes | memoryview | bytearray) -> int:
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if self._fill + n > self.CHUNK:
            self._flush_chunk()
        if n > self.CHUNK:  # bigger than a chunk (pyarrow's column chunks): straight through
            self._wait()
            self._digest.update(data)
            self.fh.write(data)
        else:
            self._buffers[self._current][self._fill : self._fill + n] = data
            self._fill += n
        self.written += n
        return n

    def _flush_chunk(self) -> None:
        if not self._fill:
            return
        view = memoryview(self._buffers[self._current])[: self._fill]
        self._wait()
        if len(self._buffers) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="isic2020-sha256")
            self._hashing = self._pool.submit(self._digest.update, view)
            self.fh.write(view)
            self._current = 1 - self._current
        else:
            self._digest.update(view)
            self.fh.write(view)
        self._fill = 0

    def _wait(self) -> None:
        if self._hashing is not None:
            self._hashing.result()
            self._hashing = None

    def hexdigest(self) -> str:
        self._flush_chunk()
        self._wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return self._digest.hexdigest()

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        self._flush_chunk()
        self._wait()
        self.fh.flush()

    def close(self) -> None:  # the destination's writer closes the real file
        self.flush()
        self.closed = True

    def writable(self) -> bool:
        return True


class ShardFormat(Protocol):
    """How one kind of shard is written (WebDataset tar, Parquet)."""

    ext: str
    recipe: str

    def cost(self, sample: Sample) -> int: ...

    def write(self, out: HashingWriter, samples: list[Sample]) -> None: ...


@dataclass
class ShardEntry:
    name: str
    samples: int
    bytes: int
    sha256: str
    first: str
    last: str
    plan: str


@dataclass
class SplitResult:
    """What one split's export did (``kept``: shards already there, checked and skipped)."""

    split: str
    image_format: str
    samples: int
    missing: int
    shards: int = 0
    written: int = 0
    kept: int = 0
    bytes: int = 0
    removed: list[str] = field(default_factory=list)


@dataclass
class Planned:
    name: str
    samples: list[Sample]
    plan: str


def plan_digest(samples: list[Sample], recipe: str) -> str:
    h = hashlib.sha256(recipe.encode())
    for s in samples:
        h.update(json.dumps([s.key, s.size, s.meta, s.target], sort_keys=True).encode())
    return h.hexdigest()


def plan_shards(
    samples: list[Sample], fmt: ShardFormat, split: str, shard_size: int
) -> list[Planned]:
    groups: list[list[Sample]] = []
    current: list[Sample] = []
    used = 0
    for s in samples:
        c = fmt.cost(s)
        if current and used + c > shard_size:
            groups.append(current)
            current, used = [], 0
        current.append(s)
        used += c
    if current:
        groups.append(current)
    return [
        Planned(f"isic2020-{split}-{i:06d}.{fmt.ext}", g, plan_digest(g, fmt.recipe))
        for i, g in enumerate(groups)
    ]


class Index:
    """The index in DEST: read once, updated and rewritten after every shard."""

    def __init__(self, dest: Destination, layout: str, shard_size: int) -> None:
        self.dest = dest
        raw = dest.read(INDEX_NAME)
        doc: dict[str, Any] = {}
        if raw is not None:
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {}
            if doc.get("layout") not in (None, layout):
                raise UsageError(
                    f"DEST {dest.url} holds a {doc.get('layout')} export, not {layout}",
                    "choose another folder for this layout",
                )
        self.doc: dict[str, Any] = {
            "tool": "isic2020",
            "version": __version__,
            "layout": layout,
            "shard_size": shard_size,
            "splits": doc.get("splits") if isinstance(doc.get("splits"), dict) else {},
        }

    def previous(self, split: str) -> dict[str, dict[str, Any]]:
        entry = self.doc["splits"].get(split) or {}
        shards = entry.get("shards") if isinstance(entry, dict) else None
        return {e["name"]: e for e in shards or [] if isinstance(e, dict) and "name" in e}

    def save(self, split: str, info: dict[str, Any]) -> None:
        self.doc["splits"][split] = info
        self.doc["splits"] = dict(sorted(self.doc["splits"].items()))
        with self.dest.writer(INDEX_NAME) as fh:
            fh.write((json.dumps(self.doc, indent=2) + "\n").encode())


def _reusable(dest: Destination, old: dict[str, Any] | None, p: Planned, size: int | None) -> bool:
    if old is None or old.get("plan") != p.plan or size is None or size != old.get("bytes"):
        return False
    digest = dest.sha256(p.name)
    return digest is None or digest == old.get("sha256")


def write_split(
    dest: Destination,
    index: Index,
    fmt: ShardFormat,
    sset: SampleSet,
    image_format: str,
    shard_size: int,
    progress: Callable[[int], None] | None = None,
) -> SplitResult:
    """Write (or keep) every shard of one split, the index after each; see the module doc."""
    planned = plan_shards(sset.samples, fmt, sset.split, shard_size)
    previous = index.previous(sset.split)
    sizes = dest.sizes()
    result = SplitResult(sset.split, image_format, len(sset.samples), sset.missing, len(planned))
    entries: dict[str, dict[str, Any]] = {
        p.name: previous[p.name]
        for p in planned
        if p.name in previous and previous[p.name].get("plan") == p.plan
    }

    def info(complete: bool) -> dict[str, Any]:
        return {
            "format": image_format,
            "samples": result.samples,
            "missing": sset.missing,
            "columns": sset.columns,
            "complete": complete,
            "shards": [entries[p.name] for p in planned if p.name in entries],
        }

    for p in planned:
        old = entries.get(p.name)
        if _reusable(dest, old, p, sizes.get(p.name)):
            result.kept += 1
        else:
            entries.pop(p.name, None)
            index.save(sset.split, info(False))
            with dest.writer(p.name) as fh:
                out = HashingWriter(fh)
                fmt.write(out, p.samples)
                digest = out.hexdigest()
            entry = ShardEntry(p.name, len(p.samples), out.written, digest,
                               p.samples[0].key, p.samples[-1].key, p.plan)
            entries[p.name] = asdict(entry)
            result.written += 1
            index.save(sset.split, info(False))
        result.bytes += int(entries[p.name]["bytes"])
        if progress is not None:
            progress(len(p.samples))
    index.save(sset.split, info(True))
    names = {p.name for p in planned}
    for name in sorted(sizes):
        m = SHARD_RE.match(name)
        if m and m.group(1) == sset.split and name not in names:
            dest.remove(name)
            result.removed.append(name)
    return result
