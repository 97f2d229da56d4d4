"""The rules every zip entry must pass before one byte of the archive is written anywhere.

One set, used by every path (``local`` extraction, ``streaming`` during the download, remote
members for subsets and ``--direct``), with one set of messages, so an archive is refused the
same way, in the same words, however it is read:

* **Unsafe entries refuse the archive:** absolute paths, ``..``, drive letters, NUL bytes,
  Windows device names, symbolic links and devices (Unix ``external_attr``). Output paths are
  built from the validated canonical image name only, so nothing can land outside the data
  directory even in theory.
* **Zip bombs refuse the archive:** a member larger than :data:`MAX_MEMBER_BYTES`, one
  compressed more than :data:`MAX_RATIO`:1 (JPEG and DICOM pixel data barely compress; members
  under :data:`RATIO_FLOOR` may compress as they like), or a total over ``MAX_RATIO`` times the
  archive. The decoder never writes more than the declared size either.
* **Images by name, not folder:** an image is any entry whose *base name* is
  ``ISIC_<7 ASCII digits>.jpg`` (``.dcm``), case-insensitive, wherever it stands; it lands as
  ``ISIC_0000000.jpg``. Every other file entry is reported by name (never silently dropped),
  folders are counted only.
* **Duplicates:** two entries that are the same image with different contents refuse the
  archive; identical ones keep the first and are reported.

A refusal is :class:`Refused` (the words); :func:`refusal` names the archive and the remedy.
"""

from __future__ import annotations

import functools
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from isic2020.catalog.manifest import EXTENSIONS
from isic2020.errors import VerificationError

IMAGE_RE = re.compile(r"^ISIC_([0-9]{7})\.(jpg|dcm)$", re.IGNORECASE | re.ASCII)
_IMAGE_EXTS = ("jpg", "dcm")  # IMAGE_RE's
_S_IFMT = 0o170000  # the file type bits of a Unix mode
_PLAIN_KINDS = (stat.S_IFREG, stat.S_IFDIR)
MAX_MEMBER_BYTES = 2 * 1024**3  # the largest real images are tens of MB
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20  # members under 1 MiB may compress as they like (headers, text files)
_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in range(10)
}
# Relative, ASCII letters, digits, ``_ - .``, no part starting with a dot (so no ``..``).
_PLAIN_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_PLAIN_NAME = re.compile(rf"(?:{_PLAIN_PART}/)*{_PLAIN_PART}/?")
#: The usual image entry (``train/ISIC_0000000.jpg``), by format (None: either): a plain name
#: (:data:`_PLAIN_NAME`) whose base name is canonical already. Such a name breaks no name rule
#: but a folder's device name, and lands under its base name as it is: :func:`plan_entries`
#: judges it with one match, exactly as :func:`unsafe_reason` and :func:`image_file_name` would.
_CANONICAL = {
    ext: re.compile(rf"((?:{_PLAIN_PART}/)*)(ISIC_[0-9]{{7}}\.(?:{ext or '|'.join(_IMAGE_EXTS)}))")
    for ext in (*_IMAGE_EXTS, None)
}
#: What to do about an archive on disk that breaks a rule.
LOCAL_HINT = "the archive is not the official one: delete DATA/archives/{archive} and fetch again"
#: ... and about one on a server.
REMOTE_HINT = "the server's archive is damaged or not the official one; try another --mirror"


class Entry(Protocol):
    """What the rules read of a directory entry (``zipformat.Entry``; this module does not
    import the parser, whose entries answer ``unsafe_reason`` and ``image_file_name`` from
    here)."""

    name: str
    compressed_size: int
    file_size: int
    crc: int
    external_attr: int
    create_system: int

    @property
    def is_dir(self) -> bool: ...

    def unsafe_reason(self) -> str | None: ...


class Refused(ValueError):
    """An entry breaks a rule (the text names it and says which)."""


def refusal(archive: str, exc: Exception, hint: str) -> VerificationError:
    """The user's error for a broken rule or a damaged structure of ``archive``."""
    return VerificationError(f"{archive}: {exc}", hint.format(archive=archive))


def damaged_member(archive: str, name: str, why: str, hint: str) -> VerificationError:
    """The user's error for a member whose bytes are not what the directory says."""
    return VerificationError(
        f"{archive}: member {name!r} is damaged: {why}", hint.format(archive=archive)
    )


def unsafe_reason(name: str, external_attr: int = 0, create_system: int = 0) -> str | None:
    """Why an entry must not be extracted anywhere, or None when its name and type are safe."""
    if _PLAIN_NAME.fullmatch(name):
        # The usual case (``train/ISIC_0000000.jpg``): only the device names can fail; the
        # folder is the same for thousands of entries, so it is judged once.
        folder, _, base = name.rpartition("/")
        why = _device_part(base) or (_folder_reason(folder) if folder else None)
    else:
        if "\x00" in name:
            return "NUL byte in name"
        if name.startswith(("/", "\\")):
            return "absolute path"
        if re.match(r"^[A-Za-z]:", name):
            return "drive letter"
        parts = re.split(r"[\\/]", name)
        if ".." in parts:
            return "'..' in path"
        why = next((w for w in map(_device_part, parts) if w), None)
    return why or _type_reason(external_attr, create_system)


def _type_reason(external_attr: int, create_system: int) -> str | None:
    """A link or a device by the entry's Unix attributes, said; else None."""
    mode = external_attr >> 16
    if create_system == 3 and mode:  # Unix attributes present
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            return "symbolic link"
        if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return "device or special file"
    return None


def _device_part(part: str) -> str | None:
    """A path part named like a Windows device (``CON``, ``com1.txt``), said; else None."""
    if part.split(".", 1)[0].strip().upper() in _DEVICE_NAMES:
        return f"device name {part!r}"
    return None


@functools.lru_cache(maxsize=256)
def _folder_reason(folder: str) -> str | None:
    return next((w for w in map(_device_part, folder.split("/")) if w), None)


def image_file_name(name: str, ext: str | None = None) -> str | None:
    """``ISIC_xxxxxxx.jpg`` for an entry named like an image (extension ``ext`` when given)."""
    base = name.rpartition("/")[2].rpartition("\\")[2]
    m = IMAGE_RE.match(base)
    if not m or (ext is not None and m.group(2).lower() != ext):
        return None
    return f"ISIC_{m.group(1)}.{m.group(2).lower()}"


def check_entry(e: Entry, *, safe: bool = False) -> None:
    """Raise :class:`Refused` if ``e`` is unsafe (unless already checked: ``safe``) or a bomb."""
    why = None if safe else e.unsafe_reason()
    if why:
        raise Refused(f"refusing to extract: entry {e.name!r} is unsafe ({why}); "
                      "nothing was written")
    _check_size(e)


def _check_size(e: Entry) -> None:
    """Raise :class:`Refused` if ``e`` would expand like a bomb."""
    if e.file_size > MAX_MEMBER_BYTES or (
        e.file_size > RATIO_FLOOR and e.file_size > MAX_RATIO * max(e.compressed_size, 1)
    ):
        raise Refused(
            f"refusing to extract: entry {e.name!r} expands {e.compressed_size} to "
            f"{e.file_size} bytes (zip bomb?); nothing was written"
        )


@dataclass(slots=True)
class Member:
    """An image entry and the canonical file name it lands as."""

    entry: Entry
    final: str


@dataclass
class Plan:
    """What an archive holds, once every entry passed the rules."""

    members: list[Member] = field(default_factory=list)
    non_images: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    directories: int = 0
    #: The ``(Directory, entries)`` of ``zipformat.read_directory`` this plan was made from,
    #: when its maker kept them: saving the directory then needs no second parse.
    parsed: tuple[Any, list[Any]] | None = field(default=None, repr=False)
    #: ``saved.PreparedDirectory``: the saved directory's file, made while the archive
    #: downloaded (by ``streaming``), written when the archive lands as it expected.
    prepared: Any = field(default=None, repr=False)


def plan_entries(entries: Sequence[Entry], fmt: str | None, archive_size: int) -> Plan:
    """Every entry through the rules: the images of format ``fmt`` (any when None), the other
    entries by name, identical duplicates. Raises :class:`Refused` for the first broken rule."""
    ext = EXTENSIONS[fmt] if fmt else None
    canonical = _CANONICAL[ext].fullmatch
    plan = Plan()
    members: dict[str, Member] = {}
    get = members.get
    total = 0
    for e in entries:
        usual = canonical(e.name)
        if usual is not None:  # the same verdicts as below, by one match (see _CANONICAL)
            folder, final = usual.groups()
            # The checks of _type_reason and _check_size, inlined for the usual entry (a
            # regular file or no Unix type, small enough to need no ratio): said by them.
            kind = (e.external_attr >> 16) & _S_IFMT
            if (folder and _folder_reason(folder[:-1])) or (
                kind and e.create_system == 3 and kind not in _PLAIN_KINDS
            ):
                check_entry(e)  # raises, in the words of the rules
            size = e.file_size
            if size > RATIO_FLOOR:
                _check_size(e)
            total += size
        elif e.is_dir:
            why = e.unsafe_reason()
            if why:
                check_entry(e)
            plan.directories += 1
            continue
        else:
            check_entry(e)
            total += e.file_size
            final = image_file_name(e.name, ext)
            if final is None:
                plan.non_images.append(e.name)
                continue
        prev = get(final)
        if prev is not None:
            if prev.entry.crc != e.crc or prev.entry.file_size != e.file_size:
                raise Refused(
                    f"entries {prev.entry.name!r} and {e.name!r} are both {final} with "
                    "different contents"
                )
            plan.duplicates.append(e.name)
            continue
        members[final] = Member(e, final)
    if total > MAX_RATIO * max(archive_size, 1) and total > RATIO_FLOOR:
        raise Refused(
            f"refusing to extract: {total} bytes from a {archive_size}-byte archive "
            "(zip bomb?); nothing was written"
        )
    plan.members = list(members.values())
    return plan
