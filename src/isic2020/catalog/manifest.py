"""The manifest: the official files, their hosts, sizes and expected counts.

It is plain TOML (``manifests/isic2020.toml``), read with the standard library, and validated
strictly: a broken manifest must fail loudly at start-up, naming the file, the entry and the
field, rather than half-way through a 23 GB download.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from isic2020 import config
from isic2020.errors import ManifestError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

SPLITS = ("train", "test")
FORMATS = ("jpeg", "dicom", "dicom-original")
FORMAT_CHOICES = (*FORMATS, "none")
# The file extension of each format's images, in the archives and on disk.
EXTENSIONS = {"jpeg": "jpg", "dicom": "dcm", "dicom-original": "dcm"}
SPLIT_CHOICES = (*SPLITS, "all")
ROLES = ("ground_truth", "ground_truth_v2", "duplicates", "test_metadata")
KINDS = ("archive", "metadata")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?B)\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


@dataclass(frozen=True)
class FileEntry:
    """One official file."""

    name: str
    kind: str
    split: str
    format: str
    published_size: str
    hosts: tuple[str, ...]
    role: str | None = None
    images: int | None = None
    rows: int | None = None
    size: int | None = None
    etag: str | None = None
    sha256: str | None = None

    @property
    def is_archive(self) -> bool:
        return self.kind == "archive"

    @property
    def approx_bytes(self) -> int:
        """Exact size when known, else the published size (for disk estimates only)."""
        if self.size is not None:
            return self.size
        return parse_size(self.published_size)

    def urls(self, mirrors: Sequence[str] = ()) -> list[str]:
        """Candidate URLs in order: the mirrors replace the manifest's hosts when given."""
        bases = list(mirrors) if mirrors else list(self.hosts)
        return [join_url(base, self.name) for base in bases]


@dataclass(frozen=True)
class Manifest:
    path: str
    files: tuple[FileEntry, ...]

    def by_name(self, name: str) -> FileEntry:
        for f in self.files:
            if f.name == name:
                return f
        raise UsageError(f"no file named {name!r} in manifest {self.path}")

    def metadata(self, split: str, role: str | None = None) -> list[FileEntry]:
        return [
            f
            for f in self.files
            if f.kind == "metadata" and f.split == split and (role is None or f.role == role)
        ]

    def role(self, role: str) -> FileEntry | None:
        for f in self.files:
            if f.role == role:
                return f
        return None

    def archive(self, split: str, fmt: str) -> FileEntry | None:
        for f in self.files:
            if f.kind == "archive" and f.split == split and f.format == fmt:
                return f
        return None

    def for_mirrors(self) -> Manifest:
        """This manifest as mirrors are held to it: an entry whose sha256 is pinned no longer
        demands its ETag. A mirror's ETag depends on how it was uploaded (its part size, or no
        content hash at all: nginx), the sha256 proves the bytes whatever it is."""
        files = tuple(replace(f, etag=None) if f.sha256 else f for f in self.files)
        return replace(self, files=files)

    def select(self, split: str = "all", fmt: str = "jpeg") -> list[FileEntry]:
        """The files a ``fetch --split/--format`` needs: CSVs always, then the archives."""
        splits = expand_split(split)
        if fmt not in FORMAT_CHOICES:
            raise UsageError(
                f"unknown format {fmt!r}", f"use one of {', '.join(FORMAT_CHOICES)}"
            )
        chosen = [f for s in splits for f in self.metadata(s)]
        if fmt != "none":
            for s in splits:
                a = self.archive(s, fmt)
                if a is not None:
                    chosen.append(a)
        return chosen


def expand_split(split: str) -> tuple[str, ...]:
    if split == "all":
        return SPLITS
    if split in SPLITS:
        return (split,)
    raise UsageError(f"unknown split {split!r}", f"use one of {', '.join(SPLIT_CHOICES)}")


def join_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def parse_size(text: str) -> int:
    m = _SIZE_RE.match(text or "")
    if not m:
        return 0
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def default_manifest_path() -> Path:
    """``$ISIC2020_MANIFEST``, else the copy shipped in the wheel, else the source tree's."""
    env = config.path(config.MANIFEST)
    if env is not None:
        return env
    # The package folder (where the wheel puts package data; importlib.resources would say the
    # same for a package on disk, at the price of importing it at every start-up).
    here = Path(__file__).resolve().parents
    shipped = here[1] / "manifests" / "isic2020.toml"
    return shipped if shipped.is_file() else here[3] / "manifests" / "isic2020.toml"


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    p = Path(path) if path else default_manifest_path()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ManifestError(
            f"cannot read manifest {p}: {exc.strerror or exc}",
            "pass a readable file with --manifest or $ISIC2020_MANIFEST",
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"manifest {p}: not valid TOML: {exc}", "fix the file") from None
    return parse_manifest(data, str(p))


def parse_manifest(data: dict[str, Any], source: str = "<manifest>") -> Manifest:
    schema = data.get("schema")
    if schema != 1:
        raise ManifestError(
            f"manifest {source}: field 'schema' must be 1, found {schema!r}",
            "this isic2020 reads schema 1 manifests",
        )
    raw_files = data.get("file")
    if not isinstance(raw_files, list) or not raw_files:
        raise ManifestError(f"manifest {source}: no [[file]] entries", "add the official files")
    files = [_parse_entry(source, i, item) for i, item in enumerate(raw_files)]
    names = [f.name for f in files]
    for n in names:
        if names.count(n) > 1:
            raise ManifestError(f"manifest {source}: entry {n!r}: field 'name' is duplicated")
    keys = [(f.kind, f.split, f.format, f.role) for f in files]
    for f, k in zip(files, keys):
        if keys.count(k) > 1:
            raise ManifestError(
                f"manifest {source}: entry {f.name!r}: another entry has the same "
                f"kind/split/format/role {k}"
            )
    return Manifest(source, tuple(files))


def _parse_entry(source: str, index: int, item: Any) -> FileEntry:
    label = f"#{index + 1}"
    if not isinstance(item, dict):
        raise ManifestError(f"manifest {source}: entry {label}: not a table")
    if isinstance(item.get("name"), str):
        label = repr(item["name"])

    def fail(field: str, why: str) -> ManifestError:
        return ManifestError(f"manifest {source}: entry {label}: field '{field}' {why}")

    def req_str(field: str, choices: Iterable[str] | None = None) -> str:
        if field not in item:
            raise fail(field, "is missing")
        v = item[field]
        if not isinstance(v, str) or not v.strip():
            raise fail(field, "must be a non-empty string")
        if choices is not None and v not in choices:
            raise fail(field, f"must be one of {', '.join(choices)}, found {v!r}")
        return v

    def opt_int(field: str) -> int | None:
        v = item.get(field, "")
        if v == "" or v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise fail(field, f"must be a non-negative integer or \"\", found {v!r}")
        return v

    def opt_str(field: str, pattern: re.Pattern[str] | None = None) -> str | None:
        v = item.get(field, "")
        if not isinstance(v, str):
            raise fail(field, f"must be a string, found {v!r}")
        if not v:
            return None
        if pattern is not None and not pattern.match(v):
            raise fail(field, f"is not well-formed: {v!r}")
        return v

    name = req_str("name")
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise fail("name", f"must be a plain file name, found {name!r}")
    kind = req_str("kind", KINDS)
    split = req_str("split", SPLITS)
    fmt = req_str("format", FORMATS if kind == "archive" else ("metadata",))
    published = req_str("published_size")
    if parse_size(published) <= 0:
        raise fail("published_size", f"must look like '23 GB', found {published!r}")
    hosts_raw = item.get("hosts")
    if not isinstance(hosts_raw, list) or not hosts_raw:
        raise fail("hosts", "must be a non-empty list of URLs")
    hosts = []
    for h in hosts_raw:
        if not isinstance(h, str) or not h.startswith("https://"):
            raise fail(
                "hosts", f"must hold https:// URLs (plain http only as --mirror), found {h!r}"
            )
        hosts.append(h)
    role = None
    images = rows = None
    if kind == "metadata":
        role = req_str("role", ROLES)
        rows = opt_int("rows")
        if rows is None:
            raise fail("rows", "is missing (expected number of data rows)")
    else:
        images = opt_int("images")
        if images is None:
            raise fail("images", "is missing (expected number of images)")
    etag = opt_str("etag")
    if etag:
        etag = etag.strip('"')
    return FileEntry(
        name=name,
        kind=kind,
        split=split,
        format=fmt,
        published_size=published,
        hosts=tuple(hosts),
        role=role,
        images=images,
        rows=rows,
        size=opt_int("size"),
        etag=etag,
        sha256=opt_str("sha256", _SHA256_RE),
    )


def manifest_to_toml(manifest: Manifest) -> str:
    """Serialise (used by the synthetic builder and to pin sizes/ETags after a fetch)."""
    out = ["schema = 1", ""]
    for f in manifest.files:
        out.append("[[file]]")
        out.append(f"name = {_q(f.name)}")
        out.append(f"kind = {_q(f.kind)}")
        out.append(f"split = {_q(f.split)}")
        out.append(f"format = {_q(f.format)}")
        if f.role:
            out.append(f"role = {_q(f.role)}")
        out.append(f"published_size = {_q(f.published_size)}")
        if f.images is not None:
            out.append(f"images = {f.images}")
        if f.rows is not None:
            out.append(f"rows = {f.rows}")
        out.append("hosts = [" + ", ".join(_q(h) for h in f.hosts) + "]")
        out.append(f"size = {f.size}" if f.size is not None else 'size = ""')
        out.append(f"etag = {_q(f.etag or '')}")
        out.append(f"sha256 = {_q(f.sha256 or '')}")
        out.append("")
    return "\n".join(out)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
