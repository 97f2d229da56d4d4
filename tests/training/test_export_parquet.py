"""export --layout parquet: Hugging Face ``datasets`` sees an Image feature with the exact
bytes and every metadata column plus fold; row groups stay bounded; same input, same files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.jpegs import write_jpegs
from support.metadata import make_synthetic
from support.rss import run_with_peak_rss

INDEX = "isic2020-index.json"


def _data(tmp_path: Path, folds: bool = True):
    data = tmp_path / "data"
    syn = make_synthetic(data)
    images = write_jpegs(data, {"train": list(syn.train["image_name"]),
                                "test": list(syn.test["image_name"])})
    if folds:
        assert run_cli("folds", "--data-dir", str(data)).returncode == 0
    return data, syn, images


def _export(data: Path, dest: Path, *extra: str):
    return run_cli("export", "--layout", "parquet", "--data-dir", str(data), str(dest),
                   "--json", *extra)


def test_datasets_loads_an_image_feature_with_the_exact_bytes(tmp_path: Path, monkeypatch) -> None:
    # datasets' caches and the hub stay inside the test's folder, and off the network
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    import pandas as pd

    data, syn, images = _data(tmp_path)
    dest = tmp_path / "pq"
    r = _export(data, dest)
    assert r.returncode == 0, r.stderr
    files = sorted(str(p) for p in dest.glob("isic2020-train-*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["target"].dtype == "int64" and ds.features["fold"].dtype == "int64"
    assert list(ds.features) == [
        "image", "image_name", "patient_id", "sex", "age_approx",
        "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target",
        "lesion_id", "fold",
    ]
    raw = ds.cast_column("image", datasets.Image(decode=False))
    folds = pd.read_csv(data / "folds.csv").set_index("image_name")["fold"]
    truth = syn.train.set_index("image_name")
    assert raw["image_name"] == sorted(syn.train["image_name"])
    for row in raw:
        key = row["image_name"]
        assert row["image"]["bytes"] == images[key]
        assert row["image"]["path"] == f"{key}.jpg"
        assert row["fold"] == int(folds[key])
        assert row["target"] == int(truth.loc[key, "target"])
        assert row["lesion_id"] == truth.loc[key, "lesion_id"]
        assert row["sex"] == (truth.loc[key, "sex"] or None)
    first = ds[0]["image"]  # decoded by datasets, as a training loop would get it
    assert first.size == (24, 16)
    test_files = sorted(str(p) for p in dest.glob("isic2020-test-*.parquet"))
    test = datasets.load_dataset("parquet", data_files=test_files, split="train",
                                 cache_dir=str(tmp_path / "hf-cache"))
    assert "target" not in test.features and len(test) == len(syn.test)


def test_schema_and_row_groups_with_pyarrow(tmp_path: Path, monkeypatch) -> None:
    """The Image struct and the ``huggingface`` schema entry (what ``datasets`` reads), and
    row groups cut at the bound, so writing never holds a whole shard in memory."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from isic2020.commands.export import export
    from isic2020.commands.export_shards import ShardOptions
    from isic2020.training import parquet as pqmod

    data, syn, images = _data(tmp_path, folds=False)
    monkeypatch.setattr(pqmod, "ROW_GROUP_ROWS", 50)
    dest = tmp_path / "pq"
    rep = export(dest, layout="parquet", data_dir=data, shards=ShardOptions(split="train"))
    assert rep.exit_code == 0
    f = pq.ParquetFile(dest / "isic2020-train-000000.parquet")
    assert f.schema_arrow.field("image").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())])
    hf = json.loads(f.schema_arrow.metadata[b"huggingface"])
    assert hf["info"]["features"]["image"] == {"_type": "Image"}
    assert hf["info"]["features"]["image_name"] == {"dtype": "string", "_type": "Value"}
    assert f.metadata.num_rows == len(syn.train)
    assert f.metadata.num_row_groups == -(-len(syn.train) // 50)
    assert all(f.metadata.row_group(i).num_rows <= 50 for i in range(f.metadata.num_row_groups))
    table = f.read()
    got = {r["image_name"]: r["image"]["bytes"] for r in table.to_pylist()}
    assert got == {k: images[k] for k in syn.train["image_name"]}


def test_same_input_same_files_and_resume(tmp_path: Path) -> None:
    """Two exports are byte-identical; a re-run keeps every file; the index's digests hold."""
    pytest.importorskip("pyarrow")
    data, _, _ = _data(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _export(data, a, "--shard-size", "150KB").returncode == 0
    assert _export(data, b, "--shard-size", "150KB").returncode == 0
    names = sorted(p.name for p in a.iterdir())
    assert len([n for n in names if n.startswith("isic2020-train-")]) > 1
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    index = json.loads((a / INDEX).read_text())
    for e in index["splits"]["train"]["shards"]:
        assert hashlib.sha256((a / e["name"]).read_bytes()).hexdigest() == e["sha256"]
    again = _export(data, a, "--shard-size", "150KB")
    assert again.returncode == 0
    assert all(s["written"] == 0 for s in again.json["splits"]), again.stdout


def test_without_pyarrow_one_line_and_nothing_written(tmp_path: Path) -> None:
    """pyarrow is an optional extra: without it, one line saying how to install it, exit 2."""
    data, _, _ = _data(tmp_path, folds=False)
    dest = tmp_path / "pq"
    code = ("import sys; sys.modules['pyarrow'] = None; from isic2020.cli import main; "
            "main(sys.argv[1:])")
    p = subprocess.run(
        [sys.executable, "-c", code, "export", "--layout", "parquet", "--data-dir", str(data),
         str(dest)], capture_output=True, text=True, timeout=120, env=cli_env())
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("isic2020: error")]
    assert len(lines) == 1 and "isic2020[training]" in lines[0], p.stderr
    assert not dest.exists()


def _photo_sized_data(root: Path, patients: int, image_bytes: int) -> int:
    """A data directory whose training JPEGs are ``image_bytes`` of noise each (unique bytes
    per name, real SOI/EOI markers); returns their total size."""
    import io

    import numpy as np
    from PIL import Image

    from isic2020.synthetic import jpeg_bytes

    syn = make_synthetic(root, patients=patients, seed=3)
    side = int((image_bytes / 1.6) ** 0.5)  # q95 noise: about 1.6 bytes per pixel
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    out = root / "jpeg" / "train"
    out.mkdir(parents=True)
    total = 0
    for name in syn.train["image_name"]:
        data = jpeg_bytes(buf.getvalue(), name)
        (out / f"{name}.jpg").write_bytes(data)
        total += len(data)
    return total


def test_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    """Peak RSS of the export is bounded by the row group, not the shard or the dataset: a
    dataset 20 times the size of another (several row groups of JPEGs) peaks within 40 MB of
    it (the process' own peak, measured from a small parent: support.rss)."""
    pytest.importorskip("pyarrow")
    peaks, sizes = [], []
    for patients, image_bytes in ((2, 100_000), (40, 200_000)):
        data = tmp_path / f"data-{patients}"
        sizes.append(_photo_sized_data(data, patients, image_bytes))
        run = run_with_peak_rss(
            cli_cmd("export", "--layout", "parquet", "--split", "train", "--data-dir", str(data),
                    str(tmp_path / f"pq-{patients}"), "--json"),
            env=cli_env(), timeout=300)
        assert run.returncode == 0 and not run.timed_out, run.stderr[-2000:]
        peaks.append(run.peak_rss)
    assert sizes[1] > 20 * sizes[0] and sizes[1] > 40 * 10**6, sizes
    assert peaks[1] < peaks[0] + 40 * 2**20, [p // 2**20 for p in peaks]
