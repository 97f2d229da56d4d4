"""The seam through which a ranged transfer tells what its bytes are, as they land.

Why a hook and not a second pass: whatever can be done with the bytes of a region (unpack the
zip members inside it) can start as soon as that region is on disk, so the work hides behind
the download instead of following it. The transfer layer knows nothing about zips: the archive
layer's streaming unpacker is an observer.
"""

from __future__ import annotations

from collections.abc import Callable

from isic2020.transfer.model import RemoteObject


class TransferObserver:
    """Told where a ranged transfer's bytes land, as they land; the base class ignores it all.

    Invariants the engine keeps: ``begin`` comes first, ``arrived`` only for bytes written to
    the partial file it was given, ``discard`` whenever that file is thrown away (changed
    object, failed verification, a server that ignores ranges). ``arrived`` runs in a download
    thread after every block (about 1 MiB): it must be quick and must never raise. Nothing
    derived from the partial file may be trusted after ``discard``.
    """

    def first_offset(self, size: int) -> int | None:
        """Bytes from this offset to the end are fetched before the others (None: in order)."""
        return None

    def begin(
        self,
        remote: RemoteObject,
        fd: int,
        done: list[list[int]],
        prioritize: Callable[[int, int], None],
    ) -> None:
        """A transfer of ``remote`` starts into the partial file ``fd`` (valid until the call
        returns: ``os.dup`` it to keep it), with ``done`` already there from a resumed run.
        ``prioritize(start, end)`` moves queued chunks of that region to the front."""

    def arrived(self, start: int, end: int) -> None:
        """``[start, end)`` is written to the partial file."""

    def discard(self) -> None:
        """The partial file was deleted; anything made from its bytes is void."""
