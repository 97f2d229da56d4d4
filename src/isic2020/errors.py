"""Errors that end a command, each with the exit code the CLI documents.

Every error carries a message that says what is wrong *and* what to do; the CLI prints it as a
single line on stderr. Library users catch :class:`Isic2020Error` (or a subclass) instead.
"""

from __future__ import annotations

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
