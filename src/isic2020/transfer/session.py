"""The requests session every HTTP request of a fetch goes through (made and configured by
:func:`isic2020.transfer.http.make_session`).

Imported only where a session is made: a run that asks no server anything never imports
requests.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests


class Session(requests.Session):
    """A ``requests.Session`` that works out the environment's settings once per origin.

    Why: with ``trust_env`` on (proxies, ``NO_PROXY`` and CA bundles come from the
    environment), requests works out every request's proxies from scratch, walking the whole
    environment twice: a good part of a ranged GET's CPU, and a fetch makes one per piece
    of every file it downloads. requests' answer depends only on the environment (a fetch does not
    change it), the URL's scheme, host and port (``NO_PROXY`` matches host and port), the
    request's own ``stream``, ``verify`` and ``cert``, and the session's settings (set once,
    when the session is made). So requests' own answer is kept per those and handed out as a
    copy; a request with explicit proxies is merged afresh.
    """

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[tuple[Any, ...], dict[str, Any]] = {}

    def merge_environment_settings(
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify,
               tuple(cert) if isinstance(cert, list) else cert)
        kept = self._settings.get(key)
        if kept is None:
            kept = self._settings[key] = super().merge_environment_settings(
                url, {}, stream, verify, cert)
        return {**kept, "proxies": dict(kept["proxies"])}
