"""Errors that end a command, each with the exit code the CLI documents.

Every error carries a message that says what is wrong *and* what to do; the CLI prints it as a
single line on stderr. Library users catch :class:`Isic2020Error` (or a subclass) instead.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence

EXIT_OK = 0
EXIT_VERIFY = 1
EXIT_USAGE = 2
EXIT_DOWNLOAD = 3
EXIT_INTERRUPTED = 130


class Isic2020Error(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_DOWNLOAD

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        if self.hint:
            text += f"; {self.hint}"
        return " ".join(text.split())


class UsageError(Isic2020Error):
    """Bad options or bad input files (manifest, selection lists)."""

    exit_code = EXIT_USAGE


class NothingThere(UsageError):
    """What the command works on is not on disk ("nothing to verify", "nothing to extract", no
    metadata for ``stats``/``folds``/``export``): an input error (exit 2) whose hint names the
    fetch that provides it. Exit 1 stays reserved for data that is there and wrong."""


class ManifestError(UsageError):
    """The manifest is broken or incomplete; the message names file, entry and field."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        # every failure says what to do, also the many per-field checks that give no hint
        super().__init__(message, hint or "fix that field of the manifest, or use the shipped "
                         "one (no --manifest, no $ISIC2020_MANIFEST)")


class VerificationError(Isic2020Error):
    """The data on disk (or as downloaded) is not what it must be."""

    exit_code = EXIT_VERIFY


class DownloadError(Isic2020Error):
    """Network, server or disk trouble that retries and failover could not overcome."""

    exit_code = EXIT_DOWNLOAD


class ObjectChanged(DownloadError):
    """The remote object changed while we were downloading it (new ETag, or 200 to a range)."""


class DiskError(DownloadError):
    """Disk full, file size limit, read-only or unwritable data directory."""


class LockError(DownloadError):
    """Another isic2020 process holds the data directory."""


class Interrupted(Isic2020Error):
    """Ctrl-C or SIGTERM: the state on disk is resumable."""

    exit_code = EXIT_INTERRUPTED


def unreadable(path: str | os.PathLike[str] | None, exc: OSError) -> DiskError:
    """The user's error for a file or folder isic2020 may not read or write (exit 3), from any
    command: a shared dataset with a folder this user cannot read says "permission denied",
    never "nothing to verify" or an internal error."""
    where = os.fspath(path) if path is not None else "a file in the data directory"
    what = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return DiskError(f"{what}: {where}",
                     "fix its permissions (or run as the user who owns the data), then run again")


def is_permission_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM)


def host_line(url: str, message: str) -> str:
    """``URL: what went wrong``, once: messages that already start with the URL keep theirs."""
    return message if message.startswith(url) else f"{url}: {message}"


#: Answers no retry changes: the file is not there (4xx but 408/429), the server cannot serve
#: parts of a file, or it serves another object than the manifest describes.
_NO_RANGES = re.compile(r"ignores byte ranges|no byte ranges|sizes and byte ranges")
_NOT_THERE = re.compile(r"\bHTTP (?!408|429)4\d\d\b")
_OTHER_FILE = re.compile(r"but the manifest (says|pins)")


def hosts_failed_hint(failures: Sequence[str]) -> str:
    """What to do when every host failed, from what each said: "run the same command again"
    only when a retry can help (a network or server trouble); never after a 404, a server
    without byte ranges or another file than the manifest's, where it cannot."""
    hints = []
    for failure in failures:
        if _NO_RANGES.search(failure):
            hint = ("subsets and --direct need a server with byte ranges (S3, nginx; not "
                    "`python -m http.server`): use such a --mirror, or fetch the whole split")
        elif _NOT_THERE.search(failure):
            hint = ("the file is not there: check the --mirror URL (the folder holding the "
                    "official file names), or leave out --mirror for the official hosts")
        elif _OTHER_FILE.search(failure):
            hint = ("the server holds another version of the file: check --mirror and "
                    "--manifest (`isic2020 pin` writes a manifest for your own copy)")
        else:
            return ("check the network (or give a --mirror that is reachable), then run the "
                    "same command again to resume")
        if hint not in hints:
            hints.append(hint)
    return "; ".join(hints) or "check the network or give a --mirror"


def hosts_failed(what: str, failures: Sequence[str]) -> DownloadError:
    """``<what>: every host failed (URL: why; ...)`` with :func:`hosts_failed_hint`'s advice."""
    listed = "; ".join(failures) or "no http(s) host to ask"
    return DownloadError(f"{what} ({listed})", hosts_failed_hint(failures))
