"""Every command, one parametrized test each way: what a script reading ``--json`` relies on
(the envelope, durations rounded, sizes as integer bytes, states as lists), the one error
document when it fails, and files created with the umask's mode (0644 under 022), not 0600.

Run against a data directory filled by a real ``isic2020 fetch`` from a FaultServer serving a
synthetic mirror, so every command has real work to report on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from support.cli import cli_env, run_cli
from support.servers import FaultServer, refused_url

from isic2020.synthetic import build_dataset
from isic2020.version import __version__

PREFIX = "/challenges/2020/"
ENVELOPE = ("command", "ok", "exit_code", "isic2020_version", "schema")
COMMANDS = ("fetch", "inspect", "list", "stats", "folds", "verify", "extract", "status", "clean",
            "checksums", "pin", "mirror", "resize", "export")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    ds = build_dataset(tmp_path_factory.mktemp("syn"), n_train=24, n_test=6)
    with FaultServer(ds.root, prefix=PREFIX) as srv:
        yield ds, srv


@pytest.fixture(scope="module")
def fetched(served, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds, srv = served
    data = tmp_path_factory.mktemp("fetched") / "data"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", srv.url, "--quiet",
                env=cli_env(ds.manifest_path), preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr
    return data


def _success_args(command: str, url: str, out: Path) -> list[str]:
    return {
        "fetch": ["fetch", "--mirror", url, "--split", "train"],
        "inspect": ["inspect", "--mirror", url, "--split", "train"],
        "folds": ["folds", "-k", "3", "--out", str(out / "folds.csv")],
        "verify": ["verify", "--split", "train"],
        "checksums": ["checksums", "--out", str(out / "SHA256SUMS")],
        "mirror": ["mirror", str(out / "mirror")],
        "resize": ["resize", "--size", "16"],
        "export": ["export", str(out / "kaggle")],
    }.get(command, [command])


def _walk(doc: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(doc, dict):
        return [kv for k, v in doc.items() for kv in _walk(v, str(k))]
    if isinstance(doc, list):
        return [kv for v in doc for kv in _walk(v, key + "[]")] + [(key, doc)]
    return [(key, doc)]


def _envelope_ok(doc: dict[str, Any], command: str, exit_code: int) -> None:
    assert list(doc)[: len(ENVELOPE)] == list(ENVELOPE), list(doc)
    assert doc["command"] == command
    assert doc["exit_code"] == exit_code and doc["ok"] is (exit_code == 0)
    assert doc["isic2020_version"] == __version__ and doc["schema"] == 1


def _modes(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` whose mode is not 0644 (what umask 022 gives)."""
    return {str(p): oct(p.stat().st_mode & 0o777) for root in roots if root.exists()
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and p.stat().st_mode & 0o777 != 0o644}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_json_and_file_modes(served, fetched: Path, tmp_path: Path,
                                           command: str) -> None:
    ds, srv = served
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli(*_success_args(command, srv.url, out), "--data-dir", str(fetched), "--json",
                env=cli_env(ds.manifest_path), preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    _envelope_ok(doc, command, 0)
    for key, value in _walk(doc):
        if key.endswith(("seconds", "_at")) and isinstance(value, float):
            assert round(value, 3) == value, (key, value)  # durations rounded (ms)
        if key.endswith("bytes") or key == "size":
            assert value is None or (isinstance(value, int) and not isinstance(value, bool)), (
                key, value)  # sizes as integer bytes, never "2.0 KB"
        if key == "states":
            assert isinstance(value, list) and all(isinstance(s, str) for s in value), value
    assert _modes(fetched, out) == {}


def _failure_args(command: str, tmp_path: Path) -> tuple[list[str], int]:
    """A way each command fails for a user, and the code the README's table gives it."""
    broken = tmp_path / "broken.toml"
    broken.write_text("schema = 1\n")
    refused = refused_url()
    return {
        "fetch": (["fetch", "--mirror", refused, "--split", "test", "--format", "none"], 3),
        "inspect": (["inspect", "--mirror", refused, "--split", "test"], 3),
        "list": (["list", "--manifest", str(broken)], 2),
        "status": (["status", "--manifest", str(broken)], 2),
        "clean": (["clean", "--manifest", str(broken)], 2),
        "pin": (["pin", "--manifest", str(broken)], 2),
        "mirror": (["mirror", str(tmp_path / "m")], 2),
        "resize": (["resize", "--size", "16"], 2),
        "export": (["export", str(tmp_path / "kaggle")], 2),
    }.get(command, ([command], 2))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_prints_its_error_document(served, tmp_path: Path, command: str) -> None:
    ds, _ = served
    empty = tmp_path / "empty"
    empty.mkdir()
    args, code = _failure_args(command, tmp_path)
    r = run_cli(*args, "--data-dir", str(empty), "--json", env=cli_env(ds.manifest_path))
    assert r.returncode == code, r.stderr
    doc = json.loads(r.stdout)
    _envelope_ok(doc, command, code)
    error = doc["error"]
    assert error["kind"] and error["message"] and error["hint"], error
    assert len(r.error_lines) == 1 and r.stderr.splitlines()[-1] == r.error_lines[0], r.stderr
    assert error["message"] in r.error_lines[0]
