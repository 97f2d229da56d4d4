"""One request to :class:`~support.servers.fault_server.FaultServer`, twice: as its faults see
it before anything is sent (:class:`RequestInfo`, and the predicates that choose which requests
a fault hits) and as its log records it after it ended (:class:`LoggedRequest`).

Both are frozen, so neither a fault's predicate nor a test reading the log can change what the
server does with a request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True)
class RequestInfo:
    """One incoming request, as fault predicates see it (before anything is sent).

    ``start``/``end`` are the resolved byte range (inclusive) when the request carries a
    satisfiable single ``Range``; for a plain GET they are ``0`` and ``size - 1``.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    size: int | None
    ranged: bool
    start: int
    end: int
    part_number: int | None

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


Predicate: TypeAlias = Callable[[RequestInfo], bool]


def ranged(req: RequestInfo) -> bool:
    """Predicate: the request has a satisfiable ``Range`` header."""
    return req.ranged


def not_ranged(req: RequestInfo) -> bool:
    """Predicate: a request for the whole object."""
    return not req.ranged and req.part_number is None


def range_starts_at_or_after(offset: int) -> Predicate:
    """Predicate: the requested bytes start at ``offset`` or later (a resumed/later chunk)."""
    return lambda req: (req.ranged or req.part_number is not None) and req.start >= offset


def method_is(method: str) -> Predicate:
    """Predicate: the HTTP method is ``method`` (``"GET"``, ``"HEAD"``)."""
    return lambda req: req.method == method.upper()


def part_requested(req: RequestInfo) -> bool:
    """Predicate: the request carries ``?partNumber=``."""
    return req.part_number is not None


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the server saw and answered it (after it finished or broke off)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    status: int | None
    bytes_sent: int
    faults: tuple[str, ...]
    outcome: str  # "ok", "reset", "stall", "short_body", "client_gone"
    #: ``time.monotonic()`` when the request's headers were read (one clock for the whole
    #: machine, so a test can compare it with its own): gaps between requests show backoff.
    arrived: float = 0.0
    #: the client's TCP port: requests with the same ``peer`` came over one connection.
    peer: int = 0

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None
