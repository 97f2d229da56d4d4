"""HTTP sessions configured the way a careful downloader needs them.

- ``Accept-Encoding: identity``: byte ranges must address the stored bytes, never a gzip of them.
- No urllib3 retries: it cannot retry a body that breaks half-way, so all retrying is ours
  (see ``download.py``), in one place, with one budget.
- Proxies and CA bundles come from the standard environment (``HTTPS_PROXY``, ``NO_PROXY``,
  ``REQUESTS_CA_BUNDLE``...) because ``trust_env`` stays on; certificates are always verified.
- A User-Agent that names the tool and its version, so server operators can see who we are.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter

from . import __version__

USER_AGENT = (
    f"isic2020/{__version__} (+https://doi.org/10.34970/2020-ds01) "
    f"python-requests/{requests.__version__}"
)


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``read`` bounds a stall between two received blocks, not the whole body."""

    connect: float = 10.0
    read: float = 30.0

    def as_tuple(self) -> tuple[float, float]:
        return (self.connect, self.read)


def make_session(pool_size: int = 8) -> requests.Session:
    s = requests.Session()
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(2, pool_size), max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    s.hooks["response"].append(_refuse_downgrade)
    return s


def _refuse_downgrade(resp: requests.Response, *args: object, **kwargs: object) -> None:
    """Never follow a redirect from https:// to plain http:// (no silent downgrade)."""
    if resp.is_redirect and resp.url.startswith("https://"):
        target = urljoin(resp.url, resp.headers.get("Location", ""))
        if not target.startswith("https://"):
            raise requests.ConnectionError(
                f"refused a redirect from https:// to {target.split(':', 1)[0]}:// ({target})"
            )


def header_int(value: str | None) -> int | None:
    """A header's non-negative integer (``Content-Length``), or None. ASCII digits only:
    headers arrive as Latin-1, where ``str.isdigit`` accepts ``'\u00b2'`` (superscript two)
    and ``int`` then raises."""
    if value and value.isascii() and value.isdigit():
        return int(value)
    return None
