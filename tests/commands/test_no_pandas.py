"""``fetch`` (a full split, a subset by ``--sample`` or ``--images``, ``--dry-run``; all but
``--where``) and ``verify`` never import pandas.

Why: ``import pandas`` alone is ~96 MB of RSS (and 0.3-0.5 s); the metadata checks read the
CSVs with the stdlib (``catalog.table``), so a fetch can stay under the project's 150 MB peak.
Each command runs in a real process against a real server on 127.0.0.1; a small wrapper runs
the CLI with ``runpy`` and reports, when it exits, whether ``pandas`` is in ``sys.modules``.
Peak RSS is measured by ``support.rss`` (a fresh parent, so pytest's memory is not charged).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support.cli import cli_env
from support.rss import run_with_peak_rss
from support.servers import FaultServer

from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
MiB = 1 << 20
#: pandas alone takes ~96 MB; these commands on a tiny dataset take ~40-60 MB without it.
RSS_BOUND = 90 * MiB

_WRAPPER = """\
import runpy, sys
sys.argv = ["isic2020", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("isic2020", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
print("pandas imported: " + str("pandas" in sys.modules), file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("nopandas"), n_train=24, n_test=12,
                         formats=("jpeg",))


def _run(dataset, *args: str):
    run = run_with_peak_rss([sys.executable, "-c", _WRAPPER, *args],
                            env=cli_env(dataset.manifest_path), timeout=180)
    assert not run.timed_out, run.stderr[-2000:]
    return run


def test_fetch_then_verify_never_import_pandas(dataset, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        for split in ("train", "all"):
            fetch = _run(dataset, "fetch", "--split", split, "--data-dir", str(data),
                         "--mirror", srv.url)
            assert fetch.returncode == 0, fetch.stderr[-3000:]
            assert "pandas imported: False" in fetch.stderr, fetch.stderr[-3000:]
            assert fetch.peak_rss < RSS_BOUND, f"fetch peak RSS {fetch.peak_rss / MiB:.0f} MiB"
    for args in ((), ("--split", "train", "--format", "jpeg"), ("--deep",),
                 ("--format", "none")):
        verify = _run(dataset, "verify", "--data-dir", str(data), *args)
        assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
        assert "pandas imported: False" in verify.stderr, (args, verify.stderr[-3000:])
        assert verify.peak_rss < RSS_BOUND, f"verify peak RSS {verify.peak_rss / MiB:.0f} MiB"


def test_a_damaged_csv_is_reported_without_pandas(dataset, tmp_path: Path) -> None:
    """The failure path too: a ragged row is one plain problem line, still without pandas."""
    data = tmp_path / "data"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        fetch = _run(dataset, "fetch", "--format", "none", "--data-dir", str(data),
                     "--mirror", srv.url)
    assert fetch.returncode == 0, fetch.stderr[-3000:]
    gt = next((data / "metadata").glob("*GroundTruth.csv"))
    gt.write_bytes(gt.read_bytes().rstrip(b"\r\n") + b",extra\r\n")
    verify = _run(dataset, "verify", "--format", "none", "--data-dir", str(data))
    assert verify.returncode == 1, verify.stdout[-3000:] + verify.stderr[-3000:]
    assert "pandas imported: False" in verify.stderr
    assert "fields, the header 8" in verify.stdout, verify.stdout[-3000:]


def test_subset_fetches_and_their_dry_runs_never_import_pandas(dataset, tmp_path: Path) -> None:
    """``--sample`` and ``--images`` choose from the pandas-free table of the CSVs
    (``load_metadata_table``): only ``--where`` needs a frame. The dry runs choose too once the
    CSVs are on disk (the second round), so both rounds are run; a bad ``--images`` file is
    refused without pandas as well."""
    data = tmp_path / "data"
    names = tmp_path / "names.txt"
    names.write_text("\n".join(dataset.train_names[:3]) + "\n")
    subsets = (("--sample", "5"), ("--images", str(names)), ("--sample", "3", "--seed", "4"))
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        for round_ in ("no CSVs yet", "CSVs on disk"):
            for subset in subsets:
                for dry in (("--dry-run",), ()):
                    args = ("fetch", "--split", "train", *subset, *dry, "--data-dir", str(data),
                            "--mirror", srv.url)
                    run = _run(dataset, *args)
                    assert run.returncode == 0, (round_, args, run.stderr[-3000:])
                    assert "pandas imported: False" in run.stderr, (round_, args,
                                                                    run.stderr[-3000:])
                    assert run.peak_rss < RSS_BOUND, (
                        f"{' '.join(args[3:])}: peak RSS {run.peak_rss / MiB:.0f} MiB")
        bad = _run(dataset, "fetch", "--split", "train", "--images", str(tmp_path / "nope"),
                   "--data-dir", str(data), "--mirror", srv.url)
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "pandas imported: False" in bad.stderr, bad.stderr[-3000:]
    chosen = sorted(p.stem for p in (data / "jpeg" / "train").glob("*.jpg"))
    assert set(dataset.train_names[:3]) <= set(chosen) and len(chosen) >= 5
