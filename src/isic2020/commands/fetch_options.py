"""The options of a fetch: what to fetch, where from and to, and how.

Why three small objects instead of one call with 18 parameters: each group changes for its own
reason (a subset is chosen in ``FetchWhat``, a mirror or another data directory in
``FetchPlace``, the machinery in ``FetchHow``), and code that passes a fetch on (the CLI, the
dry run, the per-file step) takes the group it needs. ``isic2020.fetch(split="train", ...)``
keeps its flat keywords: :func:`options_from_keywords` maps each one onto the field of the same
name, so the keyword and the field can never mean two things.

Invariants: the field names are the keywords of ``isic2020.fetch``; an unknown keyword is a
``TypeError`` (as for any Python call), never silently ignored; the combinations a fetch cannot
do are refused by :func:`check_options` before anything is read or written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isic2020 import config
from isic2020.catalog.manifest import Manifest
from isic2020.errors import UsageError
from isic2020.transfer.http import Timeouts
from isic2020.transfer.model import (
    DEFAULT_CHUNK,
    DEFAULT_CONNECTIONS,
    MAX_CONNECTIONS,
    DownloadOptions,
)
from isic2020.transfer.ratelimit import RateLimit
from isic2020.transfer.retry import RetryPolicy

if TYPE_CHECKING:
    from isic2020.checks.verify import MetadataPrecheck
    from isic2020.store.layout import Layout
    from isic2020.store.records import Records

Log = Callable[[str], None]


@dataclass(frozen=True)
class FetchWhat:
    """What to fetch: one selection of the dataset."""

    #: ``train``, ``test`` or ``all``.
    split: str = "all"
    #: ``jpeg``, ``dicom``, ``dicom-original`` or ``none`` (the metadata CSVs only).
    fmt: str = "jpeg"
    #: A file naming the images to fetch (one per line, or a CSV with ``image_name``).
    images: str | os.PathLike[str] | None = None
    #: Fetch this many images, stratified by target.
    sample: int | None = None
    #: The seed of ``sample``: the same seed chooses the same images.
    seed: int = 0
    #: A pandas query on the metadata (``--where``): fetch the images whose rows match.
    where: str | None = None
    #: The subset replaces the recorded one (images outside it are removed) instead of adding
    #: to it (``--reset-selection``).
    reset_selection: bool = False

    @property
    def subset(self) -> bool:
        """Only some images of one split (``images``, ``sample`` or ``where``)."""
        return self.images is not None or self.sample is not None or self.where is not None


@dataclass(frozen=True)
class FetchPlace:
    """Where the data comes from and where it goes."""

    #: The data directory (default: ``$ISIC2020_DATA_DIR`` or ``~/.local/share/isic2020``).
    data_dir: str | os.PathLike[str] | None = None
    #: A manifest TOML, or a loaded :class:`Manifest` (default: the bundled one).
    manifest: str | os.PathLike[str] | Manifest | None = None
    #: Folder URLs tried before the manifest's hosts (``<URL>/<official name>``), in order.
    mirrors: Sequence[str] = ()
    #: Keep the zips in ``DATA/archives`` after unpacking them.
    keep_archives: bool = True


@dataclass(frozen=True)
class FetchHow:
    """How the fetch runs."""

    #: Parallel connections per file (default: the engine's, 16).
    connections: int | None = None
    #: Unpack the archives and verify the images (False: download and verify archives only).
    extract: bool = True
    #: Read every image straight out of the remote zip; the archive is never stored.
    direct: bool = False
    #: Report what would be transferred and the disk needed; write nothing.
    dry_run: bool = False
    #: Seconds to wait for another isic2020 holding the data directory (None: wait).
    lock_timeout: float | None = None
    #: Progress bars on stderr.
    progress: bool = False
    #: Where messages go (one line each; None: nowhere). ``--json`` output is the report's.
    log: Log | None = None
    #: The engine's options, whole (default: :func:`download_options` of this object).
    options: DownloadOptions | None = None
    #: Overall cap in bytes/s over every connection and file (``--limit-rate``; ``"10M"``
    #: is read as aria2c does, binary); None: ``$ISIC2020_LIMIT_RATE``, else no cap.
    limit_rate: float | str | None = None
    #: Seconds a request may wait between two received blocks (``--timeout``).
    read_timeout: float | None = None
    #: Seconds to open a connection (``--connect-timeout``).
    connect_timeout: float | None = None
    #: Seconds without a new byte before a host is given up (``--retry-window``).
    retry_window: float | None = None


_GROUPS: tuple[type, ...] = (FetchWhat, FetchPlace, FetchHow)
_FIELDS = {f.name: cls for cls in _GROUPS for f in fields(cls)}


def options_from_keywords(
    what: FetchWhat | None, place: FetchPlace | None, how: FetchHow | None,
    keywords: dict[str, Any],
) -> tuple[FetchWhat, FetchPlace, FetchHow]:
    """The three option objects, each keyword replacing the field of its name in the object
    given (or the default one). Raises ``TypeError`` for a keyword that is no field."""
    for name, value in (("what", what), ("place", place), ("how", how)):
        want = {"what": FetchWhat, "place": FetchPlace, "how": FetchHow}[name]
        if value is not None and not isinstance(value, want):
            raise TypeError(f"fetch() argument {name!r} must be a {want.__name__}, "
                            f"not {type(value).__name__}")
    unknown = sorted(set(keywords) - set(_FIELDS))
    if unknown:
        raise TypeError(f"fetch() got an unexpected keyword argument {unknown[0]!r}")
    objects: dict[type, Any] = {
        FetchWhat: what or FetchWhat(),
        FetchPlace: place or FetchPlace(),
        FetchHow: how or FetchHow(),
    }
    for cls in _GROUPS:
        mine = {k: v for k, v in keywords.items() if _FIELDS[k] is cls}
        if mine:
            objects[cls] = replace(objects[cls], **mine)
    return objects[FetchWhat], objects[FetchPlace], objects[FetchHow]


def check_options(what: FetchWhat, how: FetchHow) -> None:
    """Refuse what no fetch can do, before anything is read or written."""
    members_only = what.subset or how.direct
    if members_only and what.fmt == "none":
        raise UsageError(
            "--images/--sample/--where/--direct need an image format", "add --format jpeg"
        )
    if what.subset and what.split == "all":
        raise UsageError(
            "a subset is chosen from one split", "add --split train or --split test"
        )
    if what.reset_selection and not what.subset:
        raise UsageError(
            "--reset-selection replaces a subset by a new one",
            "add --images, --sample or --where (a fetch of the whole split replaces any subset)",
        )
    if members_only and not how.extract:
        raise UsageError(
            "--images/--sample/--where/--direct write images, not archives",
            "drop --no-extract",
        )
    if what.where is not None and what.where.strip():  # a broken query fails before downloads
        from isic2020.catalog.selection import check_where

        check_where(what.where, what.split)


def download_options(
    connections: int | None = None, progress: bool = False, log: Log | None = None,
    how: FetchHow | None = None,
) -> DownloadOptions:
    """Engine options: ``how``'s network fields (options) win over the environment, which
    wins over the defaults. One :class:`RateLimit` is made here for the whole fetch."""
    env = config.load()
    how = how or FetchHow()

    def pick(*values: float | None) -> float:
        return next(v for v in values if v is not None)

    rate = _limit_rate(how.limit_rate)
    rate = env.limit_rate if rate is None else rate
    # An explicit count is fixed; the default is where an adaptive pool starts.
    most = connections or env.max_connections or MAX_CONNECTIONS
    return DownloadOptions(
        connections=min(connections or DEFAULT_CONNECTIONS, most),
        max_connections=most,
        chunk_size=int(pick(env.chunk_size, DEFAULT_CHUNK)),
        timeouts=Timeouts(
            connect=pick(_positive(how.connect_timeout, "connect_timeout"),
                         env.connect_timeout, Timeouts.connect),
            read=pick(_positive(how.read_timeout, "read_timeout"),
                      env.read_timeout, Timeouts.read),
            lowest_speed=pick(env.lowest_speed, Timeouts.lowest_speed),
            speed_time=pick(env.speed_time, Timeouts.speed_time),
            rate_limit=RateLimit(rate) if rate else None,
        ),
        retry=RetryPolicy(window=pick(_positive(how.retry_window, "retry_window"),
                                      env.retry_window, RetryPolicy.window)),
        progress=progress,
        log=log,
    )


def _limit_rate(value: float | str | None) -> float | None:
    """``--limit-rate``'s bytes/s (0: no cap); a malformed one is a UsageError."""
    if value is None:
        return None
    try:
        rate = config.parse_rate(value) if isinstance(value, str) else float(value)
    except ValueError:
        rate = -1.0
    if not 0 <= rate < float("inf"):
        raise UsageError(
            f"--limit-rate {value!r} is not a rate",
            "give bytes per second, e.g. 500K, 10M or 1G (binary units, as aria2c); 0 for none",
        )
    return rate


def _positive(value: float | None, name: str) -> float | None:
    if value is not None and not 0 < value < float("inf"):
        raise UsageError(f"{name} must be a positive number of seconds, not {value!r}")
    return value


def engine_options(how: FetchHow) -> DownloadOptions:
    """``how.options`` when given, else the environment's under ``how``'s options."""
    return how.options or download_options(how.connections, how.progress, how.log, how)


@dataclass
class FetchRun:
    """One fetch under way: its options resolved, and what it opened under the lock.

    The per-file steps take this one object instead of the ten values they share. ``records``
    and ``precheck`` are set once the data directory's lock is held.
    """

    what: FetchWhat
    place: FetchPlace
    how: FetchHow
    layout: Layout
    manifest: Manifest
    mirrors: list[str]
    options: DownloadOptions
    records: Records | None = None
    precheck: MetadataPrecheck | None = None
    #: Runs a callback once the small files (CSVs) are in: they download beside the first
    #: archive, and what reads them (the metadata prechecks) must wait for them.
    after_small: Callable[[Callable[[], None]], None] = field(default=lambda fn: fn(),
                                                              repr=False)
    #: Waits until the small files are in (raises the first of their errors).
    wait_small: Callable[[], None] = field(default=lambda: None, repr=False)
    #: Images this fetch wrote and checked whole as it wrote them, by image folder: the
    #: closing verify shows them intact without reading them back (it reads every other one).
    checked: dict[Path, set[str]] = field(default_factory=dict, repr=False)
    #: An archive unpacked while it downloaded left its heap to hand back (``fetch_step``).
    heap_to_trim: bool = False

    @property
    def members_only(self) -> bool:
        """Archives are read member by member from the remote zip, never stored."""
        return self.what.subset or self.how.direct
