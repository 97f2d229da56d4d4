"""stats: the first counts a user checks; the official figures on the real metadata."""

from __future__ import annotations

import json
from pathlib import Path

from support.metadata import TEST, make_real_data_dir, make_synthetic, run_cli

from isic2020.commands.stats import compute_stats


def test_synthetic_counts(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path, patients=30, images=("jpeg",))
    r = compute_stats(data_dir=tmp_path)
    t = r.train
    assert t.images == len(syn.train)
    assert t.patients == syn.train["patient_id"].nunique()
    assert t.malignant == (syn.train["target"] == "1").sum()
    assert t.benign + t.malignant == t.images
    assert t.duplicate_pairs == len(syn.pairs)
    assert t.images_without_duplicates == len(syn.train) - len(syn.pairs)
    assert t.duplicate_pairs_across_patients == 0
    assert t.missing["sex"] == (syn.train["sex"] == "").sum()
    assert t.by_site["(missing)"] == (syn.train["anatom_site_general_challenge"] == "").sum()
    assert sum(t.by_diagnosis.values()) == t.images
    assert r.test is not None and r.test.images == len(syn.test)
    assert r.on_disk == {"jpeg": {"train": len(syn.train), "test": len(syn.test)}}
    text = "\n".join(r.summary_lines())
    assert f"{t.images:,} images" in text and "duplicates:" in text


def test_without_test_metadata(tmp_path: Path) -> None:
    make_synthetic(tmp_path)
    (tmp_path / "metadata" / TEST).unlink()
    r = compute_stats(data_dir=tmp_path)
    assert r.test is None
    assert "test metadata CSV is not on disk" in "\n".join(r.summary_lines())


def test_cli_json_and_errors(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path / "d")
    r = run_cli("stats", "--data-dir", str(tmp_path / "d"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["train"]["images"] == len(syn.train)
    r = run_cli("stats", "--data-dir", str(tmp_path / "empty"))
    assert r.returncode == 2  # missing input (run fetch first), not failed verification
    assert "isic2020 fetch --format none" in r.stderr


def test_real_figures(tmp_path: Path) -> None:
    root = make_real_data_dir(tmp_path)
    r = run_cli("stats", "--data-dir", str(root), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    t = d["train"]
    assert (t["images"], t["patients"], t["malignant"], t["duplicate_pairs"]) == (
        33126,
        2056,
        584,
        425,
    )
    assert t["images_without_duplicates"] == 32701
    assert t["duplicate_pairs_across_patients"] == 0
    assert t["lesions"] == 32701
    assert t["missing"] == {
        "image_name": 0,
        "patient_id": 0,
        "sex": 65,
        "age_approx": 68,
        "anatom_site_general_challenge": 527,
        "diagnosis": 0,
        "benign_malignant": 0,
        "target": 0,
        "lesion_id": 0,
    }
    assert t["by_diagnosis"]["melanoma"] == 584
    assert t["by_diagnosis"]["unknown"] == 27124
    assert t["by_site"]["torso"] == 16845
    assert d["test"]["images"] == 10982 and d["test"]["patients"] == 690
    human = run_cli("stats", "--data-dir", str(root)).stdout
    assert "33,126 images, 2,056 patients, 584 malignant" in human
    assert "425 pairs" in human
