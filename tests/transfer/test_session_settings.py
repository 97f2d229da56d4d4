"""The fetch's requests session works out the environment's settings once per origin
(``transfer.session.Session``): what it hands each request must still be what requests itself
would, per URL, whatever the environment says."""

from __future__ import annotations

import pytest
import requests

from isic2020.transfer.http import make_session


def _plain(url: str) -> dict:
    return requests.Session().merge_environment_settings(url, {}, True, None, None)


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "direct.invalid,port.invalid:9000")


def test_each_origin_gets_requests_own_proxies_and_no_proxy_is_per_host_and_port(proxy_env):
    s = make_session()
    urls = ["http://via.invalid/a.zip", "http://direct.invalid/a.zip",
            "http://port.invalid:9000/a.zip", "http://port.invalid:9001/a.zip",
            "https://via.invalid/a.zip"]
    for _ in range(2):  # the second round comes from what the session kept
        for url in urls:
            got = s.merge_environment_settings(url, {}, True, None, None)
            assert got == _plain(url), url
    through = s.merge_environment_settings(urls[0], {}, True, None, None)["proxies"]
    assert through.get("http") == "http://proxy.invalid:3128"
    assert s.merge_environment_settings(urls[1], {}, True, None, None)["proxies"] == {}
    assert s.merge_environment_settings(urls[2], {}, True, None, None)["proxies"] == {}
    assert s.merge_environment_settings(urls[3], {}, True, None, None)["proxies"].get("http")


def test_what_a_request_receives_is_a_copy_and_explicit_proxies_still_win(proxy_env):
    s = make_session()
    url = "http://via.invalid/a.zip"
    first = s.merge_environment_settings(url, {}, True, None, None)
    first["proxies"]["http"] = "http://changed.invalid:1"  # a caller that edits its copy
    again = s.merge_environment_settings(url, {}, True, None, None)
    assert again["proxies"]["http"] == "http://proxy.invalid:3128"
    mine = {"http": "http://mine.invalid:8080"}
    got = s.merge_environment_settings(url, dict(mine), True, None, None)
    assert got["proxies"]["http"] == "http://mine.invalid:8080"
