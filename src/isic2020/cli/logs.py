"""``--verbose`` and ``--log-file``: the CLI's handlers on the library's ``isic2020`` logger.

Why the CLI and never the library: a program that imports isic2020 decides where its logs go
(the huggingface_hub and pooch convention), so the package only logs (``logging.getLogger
(__name__)``: per-file decisions at DEBUG, such as the host chosen, the byte a download resumed
at, each retry, a throttle change) and the command's process adds handlers for the length of
one command (:func:`logging_for`), removing them after (the CLI runs in-process in tests).

- stderr: the command's messages (``isic2020: ...``), and with ``--verbose`` the DEBUG lines
  too, each through :func:`isic2020.report.write_line` so it never lands inside a bar;
- ``--log-file FILE``: every line of either kind with a UTC timestamp, appended (a log of
  several runs), whatever ``--verbose`` and ``--quiet`` say. There is no default log file:
  nothing is written inside the data directory's ``.isic2020/`` unless asked.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from isic2020.errors import UsageError
from isic2020.report import write_line

LOGGER = "isic2020"
#: The level of the command's own messages (``how.log``); verbose lines are DEBUG.
NOTICE = logging.INFO


@dataclass(frozen=True)
class LogChoice:
    """What the user asked: ``--verbose``, ``--log-file``."""

    verbose: bool = False
    log_file: str | None = None


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(f"isic2020: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - logging never fails the command
            self.handleError(record)


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
                         datefmt="%Y-%m-%dT%H:%M:%S")


def notice(msg: str) -> None:
    """A message of the command (what ``err`` printed before): stderr and the log file."""
    logging.getLogger(LOGGER).log(NOTICE, msg)


def to_file(line: str) -> None:
    """A line only for the log file (the final error, printed on stderr by the caller)."""
    logger = logging.getLogger(LOGGER)
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(logger.makeRecord(LOGGER, logging.ERROR, "", 0, line, None, None))


@contextlib.contextmanager
def logging_for(choice: LogChoice, quiet: bool) -> Iterator[None]:
    """The handlers of one command: stderr unless ``quiet`` (DEBUG with ``verbose``), the log
    file when given. A log file that cannot be opened is a usage error (exit 2)."""
    logger = logging.getLogger(LOGGER)
    handlers: list[logging.Handler] = []
    if not quiet:
        h: logging.Handler = _StderrHandler(logging.DEBUG if choice.verbose else NOTICE)
        handlers.append(h)
    if choice.log_file:
        try:
            f = logging.FileHandler(choice.log_file, mode="a", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot open the log file {choice.log_file}: "
                             f"{exc.strerror or exc}", "choose a writable --log-file") from None
        f.setLevel(logging.DEBUG)
        f.setFormatter(_UTCFormatter())
        handlers.append(f)
    old_level, old_propagate = logger.level, logger.propagate
    for h in handlers:
        logger.addHandler(h)
    if handlers:
        logger.setLevel(min(h.level for h in handlers))
        logger.propagate = False  # the command's lines are printed once, here
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)
        logger.propagate = old_propagate
