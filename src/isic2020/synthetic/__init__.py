"""A synthetic ISIC 2020 mirror: the official file names, layouts and CSV formats, tiny images.

Why this exists: the real dataset is ~120 GB and no test or benchmark may touch the network.
Every test and benchmark of this project (and any user who wants to test a pipeline offline)
builds its data here, so there is one definition of "looks like the real thing":

* CSVs exactly like the official ones: same headers and column order, CRLF line endings, blanks
  where the real files have them, consistent ``diagnosis``/``benign_malignant``/``target``
  (~2 % malignant), ``IP_`` patients with several images each, ``IL_`` lesions in v2, a
  duplicates list whose pairs share patient and lesion. With ``metadata_dir`` (a folder holding
  the real CSVs) real rows are sampled instead of invented ones.
* Zips laid out like the official ones: ``train/ISIC_xxxxxxx.jpg`` in the training JPEG zip,
  ``ISIC_2020_Test_Input/ISIC_xxxxxxx.jpg`` plus a non-image entry in the test JPEG zip,
  ``train/`` / ``test/`` ``ISIC_xxxxxxx.dcm`` in the DICOM zips.
* Real image files: JPEGs encoded by Pillow, DICOMs that are valid Part-10 files (128-byte
  preamble, ``DICM``, explicit VR little endian) readable by pydicom, carrying the CSV's patient
  ID, sex, age (``045Y``) and anatomic site.

Anatomic site in DICOM: the site is written to BodyPartExamined (0018,0015), upper case
(``LOWER EXTREMITY``, ``HEAD/NECK``): it is the standard attribute for it and what public
descriptions of the ISIC DICOMs show. Blank CSV values are simply absent from the file.

Speed: a handful of distinct images is encoded once; each file reuses those bytes with the image
name embedded (a JPEG COM segment; the DICOM's own UIDs and patient tags), so every file is
distinct and valid while the full-size set (33,126 + 10,982 JPEGs) builds in seconds.
``photo=True`` makes the JPEGs photo-sized and photo-like instead (:data:`PHOTO_SIZES`), for
the resize tests and benchmark.

Modules: ``images`` (JPEG and DICOM bytes), ``rows`` (metadata rows and CSV bytes),
``builder`` (zips, manifest, :func:`build_dataset`); every public name is re-exported here.
"""

from __future__ import annotations

from isic2020.synthetic.builder import (
    ARCHIVE_FOLDERS,
    MANIFEST_NAME,
    SyntheticDataset,
    build_dataset,
    official_manifest,
)
from isic2020.synthetic.images import PHOTO_SIZES, dicom_bytes, jpeg_bytes, photo_jpeg
from isic2020.synthetic.rows import (
    BENIGN_DIAGNOSES,
    BENIGN_WEIGHTS,
    CRLF,
    SITE_WEIGHTS,
    SITES,
)

__all__ = [
    "SyntheticDataset",
    "build_dataset",
    "official_manifest",
    "jpeg_bytes",
    "dicom_bytes",
    "photo_jpeg",
    "ARCHIVE_FOLDERS",
    "PHOTO_SIZES",
    "MANIFEST_NAME",
    "SITES",
    "SITE_WEIGHTS",
    "BENIGN_DIAGNOSES",
    "BENIGN_WEIGHTS",
    "CRLF",
]
