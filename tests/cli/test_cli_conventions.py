"""CLI conventions scripts rely on: the help for a bare call, one-line usage errors that point at
the right help, and one JSON envelope (command, ok, exit_code, version, schema) for every command,
also when it fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import run_cli
from support.metadata import make_synthetic

from isic2020.version import __version__

ENVELOPE = ("command", "ok", "exit_code", "isic2020_version", "schema")


def _envelope_ok(doc: dict, command: str, exit_code: int) -> None:
    assert list(doc)[: len(ENVELOPE)] == list(ENVELOPE), list(doc)
    assert doc["command"] == command
    assert doc["exit_code"] == exit_code
    assert doc["ok"] is (exit_code == 0)
    assert doc["isic2020_version"] == __version__
    assert doc["schema"] == 1


def test_bare_command_shows_the_help_not_an_error() -> None:
    r = run_cli()
    assert r.returncode == 2
    assert r.stdout.startswith("Usage: isic2020")
    assert "fetch" in r.stdout and "verify" in r.stdout
    assert r.stderr == ""


def test_help_summaries_are_whole_sentences() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    commands = r.stdout.split("Commands:", 1)[1].strip().splitlines()
    assert len(commands) >= 8
    for line in commands:
        assert not line.rstrip().endswith("..."), line


@pytest.mark.parametrize(
    ("args", "where", "what"),
    [
        (("fetch", "--split", "bogus"), "isic2020 fetch --help", "'bogus'"),
        (("fetch", "--bogus"), "isic2020 fetch --help", "--bogus"),
        (("folds", "-k", "1"), "isic2020 folds --help", "1 is not in the range"),
        (("bogus",), "isic2020 --help", "No such command 'bogus'"),
        (("verify", "--format", "png"), "isic2020 verify --help", "'png'"),
    ],
)
def test_usage_errors_are_one_line_pointing_at_the_commands_help(
    args: tuple[str, ...], where: str, what: str
) -> None:
    r = run_cli(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("isic2020: error: "), r.stderr
    assert what in lines[0]
    assert lines[0].endswith(f"; see '{where}'"), lines[0]
    assert ".;" not in lines[0]


def test_folds_accepts_short_k(tmp_path: Path) -> None:
    make_synthetic(tmp_path, patients=30)
    r = run_cli("folds", "-k", "3", "--data-dir", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    _envelope_ok(doc, "folds", 0)
    assert doc["k"] == 3


@pytest.mark.parametrize(
    "command", ["list", "stats", "folds", "verify", "extract", "status", "clean", "checksums"]
)
def test_every_json_document_has_the_envelope(tmp_path: Path, command: str) -> None:
    data = tmp_path / "d"
    make_synthetic(data, patients=20)
    args = [command, "--data-dir", str(data), "--json"]
    if command in ("verify", "extract"):
        args += ["--format", "none"] if command == "verify" else []
    r = run_cli(*args)
    doc = json.loads(r.stdout)
    _envelope_ok(doc, command, r.returncode)


def test_export_json_has_the_envelope(tmp_path: Path) -> None:
    data = tmp_path / "d"
    make_synthetic(data, patients=20, images=("jpeg",))
    r = run_cli("export", str(tmp_path / "out"), "--data-dir", str(data), "--json")
    assert r.returncode == 0, r.stderr
    _envelope_ok(json.loads(r.stdout), "export", 0)


@pytest.mark.parametrize(
    ("args", "command", "code"),
    [  # nothing there yet is an input error (2, "run fetch first"), as the README's table says
        (("stats",), "stats", 2),
        (("folds",), "folds", 2),
        (("export", "out"), "export", 2),
        (("extract",), "extract", 2),
        (("verify",), "verify", 2),
    ],
)
def test_a_failing_command_still_prints_its_json_document(
    tmp_path: Path, args: tuple[str, ...], command: str, code: int
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    args = tuple(str(tmp_path / a) if a == "out" else a for a in args)
    r = run_cli(*args, "--data-dir", str(empty), "--json")
    assert r.returncode == code, r.stderr
    doc = json.loads(r.stdout)
    _envelope_ok(doc, command, code)
    err = doc["error"]
    assert err["message"] and err["hint"] and "isic2020 fetch" in err["hint"]
    assert len(r.error_lines) == 1 and r.stderr.count("\n") == 1
    assert err["message"] in r.error_lines[0]
