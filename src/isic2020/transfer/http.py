"""HTTP sessions configured the way a careful downloader needs them.

- ``Accept-Encoding: identity``: byte ranges must address the stored bytes, never a gzip of them.
- No urllib3 retries: it cannot retry a body that breaks half-way, so all retrying is ours
  (see ``download.py``), in one place, with one budget.
- Proxies and CA bundles come from the standard environment (``HTTPS_PROXY``, ``NO_PROXY``,
  ``REQUESTS_CA_BUNDLE``...) because ``trust_env`` stays on; certificates are always verified.
- A User-Agent that names the tool and its version, so server operators can see who we are.
- Redirects only ever lead to http(s) URLs, and never from https:// down to http://: anything else
  (``file://``, a downgrade) raises :class:`RedirectRefused` before it is followed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from isic2020.transfer.ratelimit import RateLimit
from isic2020.version import __version__

if TYPE_CHECKING:  # requests is imported where a session is made: a re-run that asks no
    import requests  # server nothing never pays its import (a tenth of a second)
    from requests.adapters import HTTPAdapter

#: The User-Agent's first part; :func:`make_session` adds requests' version.
AGENT = f"isic2020/{__version__} (+https://doi.org/10.34970/2020-ds01)"


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``read`` bounds a stall between two received blocks, not the whole body.

    A body that trickles (a byte every few seconds) never trips ``read``; the lowest-speed rule
    does: slower than ``lowest_speed`` bytes/s over ``speed_time`` seconds fails the request
    (curl's ``--speed-limit``/``--speed-time``, aria2c's ``--lowest-speed-limit``). 0 turns it
    off. See :mod:`isic2020.transfer.speed`.

    ``rate_limit``: the fetch's one overall cap (``--limit-rate``), shared by every reader
    these timeouts reach; the time spent waiting for it never counts against the server.
    """

    connect: float = 10.0
    read: float = 30.0
    lowest_speed: float = 1024.0
    speed_time: float = 30.0
    rate_limit: RateLimit | None = field(default=None, compare=False)

    def as_tuple(self) -> tuple[float, float]:
        return (self.connect, self.read)


def make_session(pool_size: int = 8) -> requests.Session:
    import requests
    from requests.adapters import HTTPAdapter

    from isic2020.transfer.session import Session

    s = Session()
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(2, pool_size), max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers.update({"User-Agent": f"{AGENT} python-requests/{requests.__version__}",
                      "Accept-Encoding": "identity"})
    s.hooks["response"].append(_refuse_downgrade)
    with _MOUNTS_LOCK:
        for prefix, extra in _MOUNTS.items():
            s.mount(prefix, extra)
    return s


#: Adapters for URL folders that need more than plain HTTP (presigned object-store URLs,
#: ``objectstore.PresigningAdapter``): every session made after :func:`mount_adapter` uses them.
_MOUNTS: dict[str, HTTPAdapter] = {}
_MOUNTS_LOCK = threading.Lock()


def mount_adapter(prefix: str, adapter: HTTPAdapter) -> None:
    """Route every request of later sessions whose URL starts with ``prefix`` through
    ``adapter`` (requests picks the longest matching prefix)."""
    with _MOUNTS_LOCK:
        _MOUNTS[prefix] = adapter


def unmount_adapter(prefix: str) -> None:
    with _MOUNTS_LOCK:
        _MOUNTS.pop(prefix, None)


class RedirectRefused(ConnectionError):
    """A redirect that is not followed: to another scheme than http(s), or https -> http.

    A ``ConnectionError`` (the built-in one, in ``retry.network_errors()``) so that any caller
    treats it as a network failure at worst; the download engine makes it a failed host at once
    (retrying cannot change where it points).
    """


def _refuse_downgrade(resp: requests.Response, *args: object, **kwargs: object) -> None:
    """Never follow a redirect from https:// to plain http:// (no silent downgrade), nor to
    anything but http(s) (``file:///etc/passwd`` would otherwise surface as requests'
    ``InvalidSchema``, an internal error instead of a failed host)."""
    if not resp.is_redirect:
        return
    target = urljoin(resp.url, resp.headers.get("Location", ""))
    scheme = target.split(":", 1)[0].lower() if ":" in target else ""
    if scheme not in ("http", "https"):
        raise RedirectRefused(f"refused a redirect to {scheme or 'an invalid'}:// ({target[:100]})")
    if resp.url.startswith("https://") and scheme != "https":
        raise RedirectRefused(f"refused a redirect from https:// to {scheme}:// ({target[:100]})")


def header_int(value: str | None) -> int | None:
    """A header's non-negative integer (``Content-Length``), or None. ASCII digits only:
    headers arrive as Latin-1, where ``str.isdigit`` accepts ``'\u00b2'`` (superscript two)
    and ``int`` then raises."""
    if value and value.isascii() and value.isdigit():
        return int(value)
    return None
