"""Every ``ISIC2020_*`` setting lives in ``isic2020.config``: one table, one parser each.

What a user depends on: the README's table of environment variables is complete and true (a
variable read somewhere but missing from the table is a setting nobody can discover), and a
malformed value is one usage error naming the variable, never a traceback deep in the engine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from isic2020 import config
from isic2020.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "isic2020"
# Markers that are not settings: bytes written into the synthetic DICOMs.
NOT_SETTINGS = {"ISIC2020_SYN_ORIG", "ISIC2020_SYN_CORR"}


def _names_in_source() -> set[str]:
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        found |= set(re.findall(r"\bISIC2020_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return found - NOT_SETTINGS


def test_every_variable_the_package_names_is_in_the_one_table():
    table = {v.name for v in config.TABLE}
    assert _names_in_source() - table == set()
    constants = {getattr(config, a) for a in dir(config) if a.isupper() and isinstance(
        getattr(config, a), str)}
    assert table <= constants


def test_the_readme_table_lists_exactly_the_settings():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| environment variable | meaning |")
    block = readme[start:readme.index("\n\n", start)]
    listed = set(re.findall(r"`(ISIC2020_[A-Z0-9_]+)`", block))
    assert listed == {v.name for v in config.TABLE}


@pytest.mark.parametrize(
    ("name", "raw"),
    [(config.RETRY_WINDOW, "soon"), (config.READ_TIMEOUT, "-1"), (config.CONNECT_TIMEOUT, "0"),
     (config.SPEED_TIME, "inf"), (config.LOWEST_SPEED, "fast"), (config.CHUNK_SIZE, "big")],
)
def test_a_malformed_value_is_a_usage_error_naming_the_variable(name, raw):
    with pytest.raises(UsageError) as info:
        config.load({name: raw})
    assert "$" + name in str(info.value) and repr(raw) in str(info.value)
    assert info.value.exit_code == 2


def test_values_parse_and_unset_means_the_component_default():
    s = config.load({config.RETRY_WINDOW: "12.5", config.LOWEST_SPEED: "1.5M",
                     config.CHUNK_SIZE: "1048576", config.DATA_DIR: "~/d", config.STREAM: "0"})
    assert s.retry_window == 12.5 and s.lowest_speed == 1.5 * 1024 * 1024
    assert s.chunk_size == 1 << 20 and s.data_dir == Path("~/d").expanduser()
    assert s.stream is False and s.debug is False and s.malloc is True
    assert s.read_timeout is None and s.connect_timeout is None and s.manifest is None
    assert config.load({}) == config.Settings()


@pytest.mark.parametrize(("raw", "on"), [("1", True), ("yes", True), ("0", False),
                                         ("false", False), ("OFF", False), ("", True)])
def test_switches(raw, on):
    assert config.flag(config.STREAM, True, {config.STREAM: raw}) is on
