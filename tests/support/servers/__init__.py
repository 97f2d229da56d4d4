"""Real HTTP servers on 127.0.0.1 for the tests: never a mocked ``requests``.

Three servers, each a different kind of truth:

* :class:`FaultServer` -- a pure-Python server that behaves like S3 (ranges, ETags incl.
  multipart, ``?partNumber=``, conditional requests) and breaks *on purpose*: connection resets,
  error statuses, stalls, wrong ranges, short bodies, objects replaced mid-download, throttling.
  It counts every body byte it sends so tests can prove "resume did not re-download".
* :class:`NginxServer` -- a real nginx (sendfile, its own ETags and range code), so the client is
  also checked against a server we did not write.
* :class:`S3Server` -- moto's S3 in server mode, for what boto3-created objects look like
  (real multipart ETags, S3 error XML).

Everything listens on 127.0.0.1 only; nothing here touches the network.

One module a server: ``fault_server`` (state, counters, log), ``fault_handler`` (what it
answers), ``fault_wire`` (how bytes leave), ``faults`` (what can go wrong), ``exchanges`` (a
request as faults see it and as the log keeps it), ``nginx``, ``s3``, and ``common`` (free
ports, refused and unresolvable URLs, S3's ETags and errors). Import from here
(``from support.servers import FaultServer, Reset``): the modules behind it may move.
"""

from __future__ import annotations

from .common import (
    DNS_FAIL_URL,
    free_port,
    multipart_etag_of,
    refused_url,
    unresolvable_url,
)
from .exchanges import (
    LoggedRequest,
    Predicate,
    RequestInfo,
    method_is,
    not_ranged,
    part_requested,
    range_starts_at_or_after,
    ranged,
)
from .fault_server import DEFAULT_PART_SIZE, ETAG_MODES, EtagMode, FaultServer
from .faults import (
    BadContentRange,
    BadLength,
    CaptivePortal,
    ExtraHeaders,
    Fault,
    FaultRule,
    FlipByte,
    GzipBody,
    Hold,
    IgnoreRange,
    NoPartNumber,
    PartSizeClaim,
    Redirect,
    ReplaceObject,
    Reset,
    RewriteEtag,
    ShortBody,
    Stall,
    Status,
    Throttle,
    Trickle,
)
from .nginx import NginxLogEntry, NginxServer, most_at_once
from .s3 import S3Server

__all__ = [
    "DEFAULT_PART_SIZE",
    "DNS_FAIL_URL",
    "ETAG_MODES",
    "BadContentRange",
    "BadLength",
    "CaptivePortal",
    "EtagMode",
    "ExtraHeaders",
    "Fault",
    "FaultRule",
    "FaultServer",
    "FlipByte",
    "GzipBody",
    "Hold",
    "IgnoreRange",
    "LoggedRequest",
    "NginxLogEntry",
    "NginxServer",
    "NoPartNumber",
    "PartSizeClaim",
    "Predicate",
    "Redirect",
    "ReplaceObject",
    "RequestInfo",
    "Reset",
    "RewriteEtag",
    "S3Server",
    "ShortBody",
    "Stall",
    "Status",
    "Throttle",
    "Trickle",
    "free_port",
    "method_is",
    "most_at_once",
    "multipart_etag_of",
    "not_ranged",
    "part_requested",
    "range_starts_at_or_after",
    "ranged",
    "refused_url",
    "unresolvable_url",
]
