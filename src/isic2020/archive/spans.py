"""One span of a remote zip (a ranged GET over chosen members), turned into checked files.

Fed in order, one writer per piece of a span (:mod:`~isic2020.archive.unpack`), by the
transfer layer's range pool, which resumes after a break at the exact byte: the parser and
the inflater never see a seam, so a retry costs no re-download of the member. Each member's
*local* header is parsed (its name and extra lengths can differ from the directory's) and
checked against the directory (signature, method, name) by the one parser, and its data goes
through the one decoder (:mod:`~isic2020.archive.decode`: bounded, size and CRC-32 checked,
written under a temporary name and renamed once checked, or, into a staging folder that
becomes the layout's only once every member is in it, under its own name).

Why two paths: ~50 typical 20 KB members arrive in one 1 MiB block, and every Python step per
member holds the GIL that the other connections' threads need to read their sockets. A member
wholly inside the block is decoded in one call and written with one open, one write loop and
(but when staged) a rename; a member cut by the block's end is streamed (header buffered, data
decoded :data:`~isic2020.archive.decode.OUT_BLOCK` at a time into its open file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from isic2020.archive.decode import (
    Damaged,
    Decoder,
    MemberFile,
    Vouched,
    check_method,
    decode_whole,
    write_data,
)
from isic2020.archive.rules import damaged_member
from isic2020.archive.zipformat import LFH, BadZip, Entry, check_local_name, local_header_size
from isic2020.catalog.jpeg import JpegEnds
from isic2020.errors import VerificationError

#: What to do about a damaged member of a server's archive.
MEMBER_HINT = (
    "the server's archive is damaged or not the official one; try another --mirror "
    "or run the same command again"
)
_SEEK, _HEADER, _DATA = 0, 1, 2


@dataclass(frozen=True)
class Span:
    """One ranged GET: ``[start, end)`` of the archive and the chosen members inside it."""

    start: int
    end: int
    members: tuple[Entry, ...]

    @property
    def length(self) -> int:
        return self.end - self.start


def checked_finals(span: Span, finals: dict[int, str], done: int,
                   unchecked: list[int]) -> list[str]:
    """The final paths of the first ``done`` members of ``span`` (what its writer wrote, in
    order) but those at the indices ``unchecked``: the members whose content the writer's check
    (:class:`~isic2020.archive.decode.Vouched`) passed in memory before they were written."""
    skip = set(unchecked)
    return [finals[m.header_offset] for i, m in enumerate(span.members[:done]) if i not in skip]


@dataclass(frozen=True)
class StagedFolder:
    """A staging folder the writers write in place: ``fd`` is the folder open, reached without
    following links (``staging.open_member_staging``), and every name is relative to it, so a
    link planted on the way cannot redirect a write; ``shown`` is its path, for messages only.
    One record because the two travel together, also across the unpackers' fork."""

    fd: int
    shown: str


class SpanWriter:
    """Consumes one span's bytes in order (``feed``) and turns its members into files.

    ``finals``: header offset -> final path of every member to write. ``check_complete`` after
    the last byte; ``cleanup`` after a failure (the member in progress is removed).
    ``unchecked``: the indices (among the members written, in order) of those whose content
    was not checked whole in memory before it was written (streamed, or failing the check):
    the closing verify reads them, and vouches for the others (:func:`checked_finals`)."""

    def __init__(self, archive: str, span: Span, finals: dict[int, str], mode: int,
                 staged: StagedFolder | None = None) -> None:
        """``staged``: the folder ``finals`` name files in, each written in place; None:
        ``finals`` are final paths, each written under a temporary and renamed."""
        self.archive = archive
        self.dir_fd = None if staged is None else staged.fd
        self.shown = "" if staged is None else staged.shown
        self.span = span
        self.pending = list(reversed(span.members))
        self.finals = finals
        self.mode = mode
        self.pos = span.start
        self.state = _SEEK
        self.buf = bytearray()
        self.need = LFH.size
        self.member: Entry | None = None
        self.ends: JpegEnds | None = None  # the streamed member's content check
        self.decoder: Decoder | None = None
        self.file: MemberFile | None = None
        self.left = 0
        self.done = 0
        self.bytes_written = 0
        self.unchecked: list[int] = []

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n:
            if self.state == _SEEK:
                if not self.pending:
                    self.pos += n - i  # data descriptor, skipped members, trailing gap
                    return
                skip = min(n - i, self.pending[-1].header_offset - self.pos)
                i += skip
                self.pos += skip
                if i < n:  # at the next member's local header
                    used = self._whole(view, i)
                    i += used
                    self.pos += used
                    if not used:
                        self.state, self.need = _HEADER, LFH.size
                        self.buf.clear()
            elif self.state == _HEADER:
                take = min(n - i, self.need - len(self.buf))
                self.buf += view[i : i + take]
                i += take
                self.pos += take
                if len(self.buf) == self.need:
                    self._header()
            else:
                take = min(n - i, self.left)
                self._data(view[i : i + take])
                i += take
                self.pos += take
                self.left -= take
                if self.left == 0:
                    self._finish()

    def _header_len(self, m: Entry, buf: bytes | bytearray | memoryview, at: int) -> int:
        try:
            return local_header_size(buf, at, m)
        except BadZip as exc:
            raise self._bad(m, str(exc)) from None

    def _check(self, m: Entry, buf: bytes | bytearray | memoryview, at: int) -> None:
        try:
            check_local_name(buf, at, m)
            check_method(m)
        except (BadZip, Damaged) as exc:
            raise self._bad(m, str(exc)) from None

    def _whole(self, view: memoryview, i: int) -> int:
        """Write the member whose local header starts at ``view[i]`` if all of it is there;
        the bytes used (0: it is not, stream it)."""
        if len(view) - i < LFH.size:
            return 0
        m = self.pending[-1]
        hlen = self._header_len(m, view, i)
        end = i + hlen + m.compressed_size
        if end > len(view):
            return 0
        self.pending.pop()
        self._check(m, view, i)
        try:
            data = decode_whole(m, view[i + hlen : end])
        except Damaged as exc:
            raise self._bad(m, str(exc)) from None
        folder, name = self._where(m)
        vouch = Vouched.for_file(name)
        if vouch is not None:
            vouch(data)
        write_data(folder, name, self.mode, data, self.dir_fd, in_place=self.dir_fd is not None)
        if vouch is None or not vouch.passed:
            self.unchecked.append(self.done)
        self.done += 1
        self.bytes_written += m.file_size
        return end - i

    def _where(self, m: Entry) -> tuple[str, str]:
        """The folder and name ``m`` is written as (in a staging folder: the folder as shown,
        the name relative to ``dir_fd``)."""
        final = self.finals[m.header_offset]
        return (self.shown, final) if self.dir_fd is not None else os.path.split(final)

    def _header(self) -> None:
        m = self.pending[-1]
        if self.need == LFH.size:
            self.need = self._header_len(m, self.buf, 0)
            if len(self.buf) < self.need:
                return
        self.pending.pop()
        self._check(m, self.buf, 0)
        self.member = m
        self.left = m.compressed_size
        folder, name = self._where(m)
        self.file = MemberFile(folder, name, self.mode, self.dir_fd,
                               in_place=self.dir_fd is not None)
        self.ends = ends = Vouched.streamed(name)
        write = self.file.write
        if ends is None:
            self.decoder = Decoder(m, write)
        else:
            feed = ends.feed

            def both(data: bytes | memoryview) -> None:
                feed(data)
                write(data)

            self.decoder = Decoder(m, both)
        self.state = _DATA
        if self.left == 0:
            self._finish()

    def _data(self, chunk: memoryview) -> None:
        assert self.decoder is not None and self.member is not None
        try:
            self.decoder.feed(chunk)
        except Damaged as exc:
            raise self._bad(self.member, str(exc)) from None

    def _finish(self) -> None:
        m, dec, f = self.member, self.decoder, self.file
        assert m is not None and dec is not None and f is not None
        try:
            dec.finish()
        except Damaged as exc:
            raise self._bad(m, str(exc)) from None
        f.commit()
        if self.ends is None or self.ends.problem() is not None:
            self.unchecked.append(self.done)  # the verify reads it (and names the problem)
        self.file = self.decoder = self.member = self.ends = None
        self.done += 1
        self.bytes_written += dec.written
        self.state = _SEEK

    def _bad(self, m: Entry, why: str) -> VerificationError:
        return damaged_member(self.archive, m.name, why, MEMBER_HINT)

    def checked_finals(self) -> list[str]:
        return checked_finals(self.span, self.finals, self.done, self.unchecked)

    def check_complete(self) -> None:
        if self.pending or self.state != _SEEK:
            m = self.member or self.pending[-1]
            raise self._bad(m, "its bytes end before the member does")

    def cleanup(self) -> None:
        """After a failure: close and remove the member in progress (never left half-written)."""
        if self.file is not None:
            self.file.discard()
            self.file = None


class Coalescer:
    """``members.plan_ranges``' rule one member at a time, in archive order: a fetch can
    start on the first spans while the rest of a 33,126-member plan is still being made."""

    def __init__(self, ends: dict[int, int], max_gap: int, max_span: int, max_waste: float):
        self.ends = ends
        self.max_gap, self.max_span, self.max_waste = max_gap, max_span, max_waste
        self.cur: list[Entry] = []
        self.start = self.end = self.wanted = 0

    def add(self, m: Entry) -> Span | None:
        """Take the next member; the span it closed, if it closed one."""
        a, b = m.header_offset, self.ends[m.header_offset]
        if self.cur:
            gap = a - self.end
            waste = (self.end - self.start - self.wanted) + gap
            if (
                gap <= self.max_gap
                and b - self.start <= self.max_span
                and waste <= self.max_waste * (self.wanted + b - a)
            ):
                self.cur.append(m)
                self.end, self.wanted = b, self.wanted + (b - a)
                return None
        closed = self.finish()
        self.cur, self.start, self.end, self.wanted = [m], a, b, b - a
        return closed

    def finish(self) -> Span | None:
        """The span still open, if any."""
        if not self.cur:
            return None
        span = Span(self.start, self.end, tuple(self.cur))
        self.cur = []
        return span
