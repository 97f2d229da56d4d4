"""Mirrors and hosts: which URLs a fetch may use for a file, and which answers.

Invariants: a mirror is an ``http://``, ``https://`` or ``file://`` folder URL (plain http only
ever comes from a mirror the user named, never from the manifest); mirrors are tried before the
manifest's hosts, in the order given (``FileEntry.urls``); a member fetch (subset or
``--direct``) reads byte ranges: ranged GETs over http(s), ``pread`` of a ``file://`` file.
A plain path (``/srv/isic``, ``./mirror``, ``~/isic``) is a ``file://`` mirror of that
folder, which must exist (a typo is refused before anything is read).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from isic2020.catalog.manifest import FileEntry
from isic2020.errors import UsageError
from isic2020.transfer.engine import Downloader
from isic2020.transfer.localfile import is_file_url


def check_mirrors(mirrors: Sequence[str], names: Sequence[str] = ()) -> list[str]:
    """Mirrors must be http(s)://, file:// or s3:// URLs; plain http only ever comes from here.
    An s3:// mirror becomes its URL folder, presigned when there are credentials, once its
    bucket and ``names`` are found there (:mod:`isic2020.transfer.objectstore`)."""
    out = []
    for m in mirrors:
        if is_plain_path(m):
            out.append(path_mirror(m))
            continue
        if m.lower().startswith("s3://"):
            from isic2020.transfer.objectstore import s3_mirror

            out.append(s3_mirror(m, names))
            continue
        parts = urlsplit(m)
        if parts.scheme not in ("http", "https", "file") or (
            parts.scheme != "file" and not parts.netloc
        ):
            raise UsageError(
                f"mirror {m!r} is not an http://, https://, file:// or s3:// URL",
                "give the folder URL (or a local folder path) that holds the official file names",
            )
        out.append(m)
    return out


def is_plain_path(mirror: str) -> bool:
    """A mirror given as a path, not a URL: no ``scheme://``."""
    return "://" not in mirror and bool(mirror.strip())


def path_mirror(mirror: str) -> str:
    """The ``file://`` URL of a mirror folder given as a path; refused when it is no folder."""
    folder = Path(mirror).expanduser().resolve()
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise UsageError(
            f"mirror {mirror!r} {what} ({folder})",
            "give the folder that holds the official file names, or an http(s):// or s3:// URL",
        )
    return folder.as_uri()


def ranged_urls(entry: FileEntry, mirrors: Sequence[str]) -> list[str]:
    """The URLs that can serve byte ranges of ``entry`` (a member fetch); refuses when none."""
    urls = entry.urls(mirrors)
    if not urls:
        raise UsageError("no URL for this archive", "give a --mirror or fix the manifest")
    return urls


def first_answer(
    entry: FileEntry, mirrors: Sequence[str], downloader: Downloader
) -> tuple[int | None, str | None, str]:
    """``(size, url, state)`` of the first URL of ``entry`` that answers a HEAD (a ``file://``
    URL is taken as it is). ``state`` is "missing", or why the last host failed; a dry run
    reports a host that fails, it never fails on one."""
    size, url, state = entry.size, None, "missing"
    for u in entry.urls(mirrors):
        if is_file_url(u):
            return size, u, state
        try:
            remote = downloader.probe(u)
        except Exception as exc:  # noqa: BLE001 - a dry run reports, never fails on one host
            state = f"unreachable ({exc})"[:60]
            continue
        return remote.size or entry.approx_bytes, u, "missing"
    return size, url, state
