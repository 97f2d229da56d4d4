"""The metadata CSVs of a fetch download side by side (issue 14, goal 4), and the report stays
in the manifest's order. Counted from the server's log, never timed: under a per-connection
cap a response of ``n`` bytes lasts at least ``n / rate`` seconds, so a request of another CSV
that arrived before that much time had passed overlapped it."""

from __future__ import annotations

import json
import zipfile

import pytest
from support.cli import cli_env, run_cli
from support.servers import FaultServer

from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
RATE = 8 * 1024  # bytes/s per response: each CSV takes a good part of a second


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("small"), n_train=60, n_test=30)


def test_the_csvs_are_in_flight_together_and_reported_in_manifest_order(dataset, tmp_path):
    csvs = [f.name for f in dataset.metadata_files()]
    assert len(csvs) >= 3
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        for name in csvs:
            srv.throttle(RATE, name)
        r = run_cli("fetch", "--data-dir", str(tmp_path / "d"), "--mirror", srv.url,
                    "--format", "none", "--json", env=cli_env(dataset.manifest_path),
                    timeout=300)
        gets = [g for g in srv.requests(method="GET") if g.bytes_sent > 0]
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    listed = [f["name"] for f in doc["files"]]
    assert listed == sorted(listed, key=csvs.index) and set(listed) == set(csvs)
    # pairs of requests of two different CSVs where the later one arrived while the earlier
    # one was certainly still being sent
    overlapping = {
        frozenset((a.path, b.path))
        for a in gets for b in gets
        if a.path != b.path and a.arrived <= b.arrived < a.arrived + 0.5 * a.bytes_sent / RATE
    }
    assert overlapping, "the CSVs were downloaded one after another"
    paths = {g.path for g in gets}
    assert len(paths) == len(csvs)
    assert len({p for pair in overlapping for p in pair}) >= 3  # more than one pair at once


def name(g) -> str:
    """The file a logged request asked for."""
    return g.path.rsplit("/", 1)[-1]


def _direct_with_capped_csvs(dataset, csvs, tmp_path):
    """``fetch --split train --direct`` from a FaultServer that caps each CSV response at
    RATE; the result (exit 0 asserted) and the server's log."""
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        for csv in csvs:
            srv.throttle(RATE, csv)
        r = run_cli("fetch", "--split", "train", "--direct", "--data-dir", str(tmp_path / "d"),
                    "--mirror", srv.url, "--json", env=cli_env(dataset.manifest_path),
                    timeout=300)
        log = srv.requests()
    assert r.returncode == 0, r.stderr
    return r, log


def test_direct_reads_the_zip_while_the_csvs_download(dataset, tmp_path):
    """``--direct`` takes every member: the zip's directory is read while the CSVs download
    (a subset waits for them: it is chosen from them). Before, the zip's first request came
    only after the last CSV was in."""
    csvs = {e.name for e in dataset.manifest.metadata("train")}
    zip_name = dataset.archive("train", "jpeg").name
    r, log = _direct_with_capped_csvs(dataset, csvs, tmp_path)

    csv_gets = [g for g in log if g.method == "GET" and name(g) in csvs and g.bytes_sent > 0]
    zip_first = min(g.arrived for g in log if name(g) == zip_name)
    assert csv_gets, "no CSV was downloaded"
    # a CSV response of n bytes at RATE lasts at least n / RATE seconds after it arrived: a
    # zip request before half of that had passed came while that CSV was still being sent
    assert any(zip_first < g.arrived + 0.5 * g.bytes_sent / RATE
               for g in csv_gets), "the zip was read only after the CSVs were in"
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["verification"]["ok"]


def test_direct_fetches_the_members_while_the_csvs_download(dataset, tmp_path):
    """``--direct`` checks the zip's directory against the CSVs (a damaged directory lacks
    images they list) once the members are in, so the members need not wait for the CSVs.
    Before, the first member's request came only after every CSV was in and read."""
    csvs = {e.name for e in dataset.manifest.metadata("train")}
    zip_name = dataset.archive("train", "jpeg").name
    with zipfile.ZipFile(next(dataset.root.rglob(zip_name))) as z:
        start_dir = z.start_dir  # members lie below it, the directory from it on
    r, log = _direct_with_capped_csvs(dataset, csvs, tmp_path)

    def members_only(g) -> bool:  # a ranged GET that ends before the directory
        last = (g.header("Range") or "").rpartition("-")[2]
        return last.isdigit() and int(last) < start_dir

    csv_gets = [g for g in log if g.method == "GET" and name(g) in csvs and g.bytes_sent > 0]
    member_gets = [g for g in log if g.method == "GET" and name(g) == zip_name
                   and members_only(g)]
    assert csv_gets and member_gets
    first_member = min(g.arrived for g in member_gets)
    assert any(first_member < g.arrived + 0.5 * g.bytes_sent / RATE
               for g in csv_gets), "the members were fetched only after the CSVs were in"
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["verification"]["ok"]
    assert doc["files"][-1]["extraction"]["written"] == 60
