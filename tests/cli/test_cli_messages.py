"""The words a user reads: help with whole summaries, examples and the exit codes; shell
completion; one-line errors for ``folds --out``; host failures that name each URL once and
advise a retry only when one can help; a ``--where`` refused before anything downloads; counts
in the singular; ``list`` showing the bytes that are here.

Every test runs the real CLI against real servers on 127.0.0.1 (FaultServer) or real
filesystems (a read-only tmpfs as root).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from support.cli import cli_env, run_cli
from support.fixtures import served_dataset
from support.fs import read_only_dir
from support.servers import FaultServer, IgnoreRange, refused_url

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.cli import cli

PREFIX = "/challenges/2020/"
ZIP = "ISIC_2020_Training_JPEG.zip"


dataset, mirror = served_dataset("syn", n_train=24, n_test=6)


@pytest.fixture(scope="module")
def fetched(dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("fetched") / "data"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = run_cli("fetch", "--split", "train", "--data-dir", str(data), "--mirror", srv.url,
                    "--quiet", env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    return data


def _one_error(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.error_lines) == 1, r.stderr
    assert r.stderr.splitlines()[-1] == r.error_lines[0], r.stderr
    return r.error_lines[0]


# --------------------------------------------------------------------------------------------
# Help, examples, completion


def test_group_help_lists_every_summary_whole_and_the_exit_codes() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for name, command in cli.commands.items():
        summary = command.get_short_help_str(limit=1000)
        assert f"{name} {summary}" in text, name
    for code in ("0 success", "1 the data failed verification", "2 usage or input error",
                 "3 download", "130 interrupted"):
        assert code in text, code
    assert '_ISIC2020_COMPLETE=bash_source isic2020' in text


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_help_has_examples(name: str) -> None:
    r = run_cli(name, "--help")
    assert r.returncode == 0
    examples = r.stdout.split("Examples:", 1)[1].splitlines()
    lines = [ln.strip() for ln in examples if ln.strip().startswith(("isic2020 ", "cd "))]
    assert 1 <= len(lines) <= 3, r.stdout
    assert any(ln.startswith(f"isic2020 {name}") for ln in lines), lines


def test_folds_is_spelled_k_or_folds_and_the_old_spelling_still_works(fetched: Path) -> None:
    r = run_cli("folds", "--help")
    assert "-k, --folds INTEGER RANGE" in r.stdout and "--k " not in r.stdout
    for option in ("-k", "--folds", "--k"):
        r = run_cli("folds", option, "3", "--data-dir", str(fetched), "--json")
        assert r.returncode == 0, r.stderr
        assert r.json["k"] == 3


def test_shell_completion_script_and_a_completed_subcommand() -> None:
    env = cli_env(_ISIC2020_COMPLETE="bash_source")
    r = run_cli(env=env)
    assert r.returncode == 0, r.stderr
    assert "_isic2020_completion()" in r.stdout and "complete -o" in r.stdout
    env = cli_env(_ISIC2020_COMPLETE="bash_complete", COMP_WORDS="isic2020 fe", COMP_CWORD="1")
    r = run_cli(env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["plain,fetch"]
    env = cli_env(_ISIC2020_COMPLETE="bash_complete", COMP_WORDS="isic2020 fetch --sp",
                  COMP_CWORD="2")
    assert run_cli(env=env).stdout.split() == ["plain,--split"]


# --------------------------------------------------------------------------------------------
# folds --out (defect 5)


def test_folds_out_under_a_file_is_one_line_exit_2(fetched: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "folds.csv", tmp_path / "afile" / "sub" / "folds.csv"):
        r = run_cli("folds", "-k", "3", "--data-dir", str(fetched), "--out", str(out))
        assert r.returncode == 2, r.stderr
        line = _one_error(r)
        assert f"{tmp_path / 'afile'} is a file, not a folder" in line
        assert line.endswith("; choose another place for it")


def test_folds_out_into_a_missing_folder_makes_it(fetched: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "folds.csv"
    r = run_cli("folds", "-k", "3", "--data-dir", str(fetched), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert out.read_text().startswith("image_name,patient_id,fold\n")


def test_folds_out_on_a_read_only_filesystem_is_one_line_exit_3(
    fetched: Path, tmp_path: Path
) -> None:
    with read_only_dir(tmp_path / "ro") as ro:
        for out in (ro / "folds.csv", ro / "sub" / "folds.csv"):
            r = run_cli("folds", "-k", "3", "--data-dir", str(fetched), "--out", str(out))
            assert r.returncode == 3, r.stderr
            line = _one_error(r)
            assert f"cannot write {out}: " in line
            assert "choose a writable place for it" in line
        assert list(ro.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Host failures (defect 9)


def test_a_404_names_the_url_once_and_does_not_advise_retrying(dataset, mirror, tmp_path):
    env = cli_env(dataset.manifest_path)
    wrong = mirror.url + "nope/"
    r = run_cli("fetch", "--split", "test", "--format", "none", "--data-dir",
                str(tmp_path / "d"), "--mirror", wrong, env=env)
    assert r.returncode == 3
    line = _one_error(r)
    assert "HTTP 404" in line and "--mirror" in line
    assert "run the same command again" not in line
    r = run_cli("inspect", "--split", "train", "--data-dir", str(tmp_path / "d"), "--mirror",
                wrong, env=env)
    assert r.returncode == 3
    line = _one_error(r)
    url = wrong + ZIP
    assert line.count(url) == 1 and f"{url}: {url}" not in r.stderr, r.stderr
    assert "run the same command again" not in line and "--mirror" in line


def test_a_subset_from_a_server_without_ranges_says_what_would_work(dataset, mirror, tmp_path):
    mirror.add_fault(IgnoreRange(), ZIP, times=None)
    r = run_cli("fetch", "--split", "train", "--sample", "3", "--data-dir", str(tmp_path / "d"),
                "--mirror", mirror.url, env=cli_env(dataset.manifest_path))
    assert r.returncode == 3
    line = _one_error(r)
    url = mirror.url + ZIP
    assert line.startswith(f"isic2020: error: {ZIP}: every host failed")
    assert line.count(url) == 1, line
    assert "run the same command again" not in line
    assert "byte ranges" in line and "fetch the whole split" in line


def test_no_network_says_check_the_network_or_use_a_mirror(dataset, tmp_path: Path) -> None:
    """The manifest's own hosts unreachable (no --mirror given): the advice names --mirror,
    and a retry (the network may come back) is worth it."""
    man = load_manifest(dataset.manifest_path)
    down = refused_url().replace("http://", "https://")  # manifests name https hosts only
    files = tuple(dataclasses.replace(f, hosts=(down,)) for f in man.files)
    manifest = tmp_path / "down.toml"
    manifest.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    r = run_cli("fetch", "--split", "test", "--format", "none", "--data-dir",
                str(tmp_path / "d"), env=cli_env(manifest))
    assert r.returncode == 3
    line = _one_error(r)
    assert "connection refused" in line and "--mirror" in line
    assert "run the same command again" in line


def test_inspect_reads_a_file_mirror_in_place(dataset, tmp_path: Path) -> None:
    """A ``file://`` mirror's zip is read by offset like a server's: its directory is listed,
    nothing is copied into DATA."""
    r = run_cli("inspect", "--split", "train", "--data-dir", str(tmp_path / "d"), "--mirror",
                dataset.root.as_uri() + "/", env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    assert f"{ZIP}: 25 entries, 24 images" in r.stdout, r.stdout
    assert not list((tmp_path / "d").rglob("*.zip"))


# --------------------------------------------------------------------------------------------
# --where, counts, sizes


def test_a_where_syntax_error_is_refused_before_any_download(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    for where, what in (("target == = 1", "SyntaxError"), ("nosuch == 1", "nosuch")):
        r = run_cli("fetch", "--split", "train", "--where", where, "--data-dir", str(data),
                    "--mirror", mirror.url, env=cli_env(dataset.manifest_path))
        assert r.returncode == 2
        line = _one_error(r)
        assert what in line and "columns: image_name, patient_id" in line
    assert mirror.requests() == [] and not data.exists()


def test_one_image_is_one_image(dataset, mirror, tmp_path: Path) -> None:
    names = tmp_path / "one.txt"
    names.write_text(dataset.train_names[0] + "\n")
    data = tmp_path / "d"
    r = run_cli("fetch", "--split", "train", "--images", str(names), "--data-dir", str(data),
                "--mirror", mirror.url, env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    r2 = run_cli("verify", "--split", "train", "--data-dir", str(data),
                 env=cli_env(dataset.manifest_path))
    assert r2.returncode == 0, r2.stderr
    text = r.stdout + r.stderr + r2.stdout
    assert "1 member " in text or "1 image" in text, text
    assert not re.search(r"\b1 (images|members|ranges|connections|files)\b", text), text


def test_list_shows_the_bytes_here_not_the_published_size(dataset, mirror, tmp_path):
    """A mirror's smaller file (a lab's copy, a stand-in): `list` says how large it is here,
    not the manifest's published "23 GB"; the JSON keeps both, in bytes."""
    man = load_manifest(dataset.manifest_path)
    files = tuple(dataclasses.replace(f, published_size="23 GB") if f.name == ZIP else f
                  for f in man.files)
    manifest = tmp_path / "published.toml"
    manifest.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    data = tmp_path / "d"
    env = cli_env(manifest)
    r = run_cli("fetch", "--split", "train", "--data-dir", str(data), "--mirror", mirror.url,
                "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("list", "--data-dir", str(data), env=env)
    (row,) = [ln for ln in r.stdout.splitlines() if ln.startswith(ZIP)]
    size = os.path.getsize(data / "archives" / ZIP)
    assert "23 GB" not in row and "verified" in row
    assert f"{size / 1000:.1f} KB" in row, row
    r = run_cli("list", "--data-dir", str(data), "--json", env=env)
    (entry,) = [f for f in r.json["files"] if f["name"] == ZIP]
    assert entry["local_bytes"] == size and entry["published_bytes"] == 23 * 10**9
    assert entry["states"] == ["verified", "extracted"]
