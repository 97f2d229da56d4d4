"""Every ``ISIC2020_*`` setting in one table, read in one place.

Why one module: a variable read in five places drifts (different defaults, different error
messages, one accepting ``1K`` and another not). Here each setting has one name, one default, one
parser and one line of help; the README's table of environment variables is this table.

Settings are read when a command starts (:func:`load`), not at import, so a test or a notebook
that changes ``os.environ`` between two calls gets what it set. A value that does not parse is a
:class:`~isic2020.errors.UsageError` (exit 2) naming the variable and what it accepts.

Command-line options win over these variables; these win over the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from isic2020.errors import UsageError

DATA_DIR = "ISIC2020_DATA_DIR"
MANIFEST = "ISIC2020_MANIFEST"
MIRROR = "ISIC2020_MIRROR"  # read by click (``envvar=``) for ``--mirror``
RETRY_WINDOW = "ISIC2020_RETRY_WINDOW"
READ_TIMEOUT = "ISIC2020_READ_TIMEOUT"
CONNECT_TIMEOUT = "ISIC2020_CONNECT_TIMEOUT"
CHUNK_SIZE = "ISIC2020_CHUNK_SIZE"
MAX_CONNECTIONS = "ISIC2020_MAX_CONNECTIONS"
LOWEST_SPEED = "ISIC2020_LOWEST_SPEED"
SPEED_TIME = "ISIC2020_SPEED_TIME"
STREAM = "ISIC2020_STREAM"
STREAM_PROCESS_MIN = "ISIC2020_STREAM_PROCESS_MIN"
MALLOC = "ISIC2020_MALLOC"
DEBUG = "ISIC2020_DEBUG"
S3_PRESIGN_SECONDS = "ISIC2020_S3_PRESIGN_SECONDS"
PROGRESS_INTERVAL = "ISIC2020_PROGRESS_INTERVAL"
LIMIT_RATE = "ISIC2020_LIMIT_RATE"
#: pyarrow's own variable: the CLI sets it to "system" unless the user did
#: (``cli.app.flat_heap``)
ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"


@dataclass(frozen=True)
class Variable:
    """One row of the table: the variable, its default as a user would write it, and why."""

    name: str
    default: str
    help: str


TABLE: tuple[Variable, ...] = (
    Variable(DATA_DIR, "$XDG_DATA_HOME/isic2020",
             "the data directory when --data-dir is not given"),
    Variable(MANIFEST, "the shipped manifests/isic2020.toml",
             "the manifest when --manifest is not given"),
    Variable(MIRROR, "none", "mirrors, space separated, when no --mirror is given"),
    Variable(RETRY_WINDOW, "300",
             "seconds without a new byte before a host is given up (then the next mirror)"),
    Variable(READ_TIMEOUT, "30", "seconds a request may wait between two received blocks"),
    Variable(CONNECT_TIMEOUT, "10", "seconds to open a connection"),
    Variable(CHUNK_SIZE, "auto", "bytes per ranged request (default: the engine's choice)"),
    Variable(MAX_CONNECTIONS, "64",
             "the most connections per file while the rate keeps rising (--connections fixes it)"),
    Variable(LOWEST_SPEED, "1K",
             "a request slower than this (bytes/s; K, M suffixes; 0 off) for SPEED_TIME fails"),
    Variable(SPEED_TIME, "30", "seconds the lowest-speed rule looks back"),
    Variable(STREAM, "1", "0 turns off unpacking while an archive downloads (to compare)"),
    Variable(STREAM_PROCESS_MIN, "256M",
             "archives from this size on are unpacked while they download (and --direct or a "
             "subset's members) by forked children (K, M, G suffixes; 0: always; smaller "
             "ones: by threads)"),
    Variable(MALLOC, "1", "0 leaves glibc's allocator at its defaults (Linux) and pyarrow's "
             "at mimalloc"),
    Variable(DEBUG, "0", "1 shows the traceback of an internal error"),
    Variable(LIMIT_RATE, "0",
             "overall download cap in bytes/s over every connection (K, M suffixes; 0 off)"),
    Variable(S3_PRESIGN_SECONDS, "3600",
             "lifetime of the presigned URLs of an s3:// mirror (made anew before they expire)"),
    Variable(PROGRESS_INTERVAL, "30",
             "seconds between two plain progress lines when stderr is not a terminal"),
)


_SCALES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_rate(raw: str) -> float:
    """``1024``, ``1K``, ``1.5M``, ``1G`` (binary, as aria2c) -> bytes/s; ValueError
    otherwise."""
    text = raw.strip()
    scale = 1
    suffix = text[-1:].upper()
    if suffix in _SCALES:
        scale = _SCALES[suffix]
        text = text[:-1]
    value = float(text) * scale
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(raw)
    return value


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"${name} must be a number of seconds, found {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"${name} must be positive, found {raw!r}")
    return value


def _rate(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        return parse_rate(raw)
    except ValueError:
        raise UsageError(
            f"${name} must be bytes per second (e.g. 1024, 1K, 0 for off), found {raw!r}"
        ) from None


def flag(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    """A switch: unset or empty is ``default``; ``0``, ``false``, ``no``, ``off`` are off."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def path(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """A path setting (``~`` expanded), ``None`` when unset or empty."""
    raw = (os.environ if environ is None else environ).get(name)
    return Path(raw).expanduser() if raw else None


@dataclass(frozen=True)
class Settings:
    """What the environment says. ``None``: not set, the component's own default applies."""

    data_dir: Path | None = None
    manifest: Path | None = None
    retry_window: float | None = None
    read_timeout: float | None = None
    connect_timeout: float | None = None
    chunk_size: int | None = None
    max_connections: int | None = None
    lowest_speed: float | None = None
    speed_time: float | None = None
    stream: bool = True
    stream_process_min: int | None = None
    malloc: bool = True
    debug: bool = False
    s3_presign_seconds: float | None = None
    progress_interval: float | None = None
    limit_rate: float | None = None


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting now; a malformed one raises :class:`UsageError` naming it."""
    env = os.environ if environ is None else environ
    chunk = _seconds(env, CHUNK_SIZE)
    return Settings(
        data_dir=path(DATA_DIR, env),
        manifest=path(MANIFEST, env),
        retry_window=_seconds(env, RETRY_WINDOW),
        read_timeout=_seconds(env, READ_TIMEOUT),
        connect_timeout=_seconds(env, CONNECT_TIMEOUT),
        chunk_size=int(chunk) if chunk is not None else None,
        max_connections=_count(env, MAX_CONNECTIONS),
        lowest_speed=_rate(env, LOWEST_SPEED),
        speed_time=_seconds(env, SPEED_TIME),
        stream=flag(STREAM, True, env),
        stream_process_min=_bytes(env, STREAM_PROCESS_MIN),
        malloc=flag(MALLOC, True, env),
        debug=flag(DEBUG, False, env),
        s3_presign_seconds=_presign(env),
        progress_interval=_seconds(env, PROGRESS_INTERVAL),
        limit_rate=_rate(env, LIMIT_RATE),
    )


def _count(env: Mapping[str, str], name: str) -> int | None:
    """A whole number of connections, 1 to 256."""
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if not 1 <= value <= 256:
        raise UsageError(f"${name} must be a whole number from 1 to 256, found {raw!r}")
    return value


def _bytes(env: Mapping[str, str], name: str) -> int | None:
    """A size in bytes (K, M, G suffixes, binary)."""
    raw = env.get(name)
    if not raw:
        return None
    try:
        return int(parse_rate(raw))
    except ValueError:
        raise UsageError(f"${name} must be a size in bytes (e.g. 0, 64K, 256M), found {raw!r}"
                         ) from None


def _presign(env: Mapping[str, str]) -> float | None:
    """SigV4 presigned URLs live at most seven days."""
    value = _seconds(env, S3_PRESIGN_SECONDS)
    if value is not None and not 1 <= value <= 7 * 86400:
        raise UsageError(f"${S3_PRESIGN_SECONDS} must be 1 to 604800 seconds, found {value:g}")
    return value
