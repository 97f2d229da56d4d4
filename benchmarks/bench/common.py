"""Paths and constants every benchmark module shares."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


PREFIX = "/challenges/2020/"
TRAIN_ZIP = "ISIC_2020_Training_JPEG.zip"
TEST_ZIP = "ISIC_2020_Test_JPEG.zip"
MB = 10**6
MiB = 1 << 20
EXTRACTALL = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])"
PEERS = {
    "aria2c": "aria2",
    "curl": "curl",
    "unzip": "unzip",
    "7z": "p7zip-full",
}
