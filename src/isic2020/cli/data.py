"""``folds``, ``stats``, ``export``, ``resize``: from the verified files to training."""

from __future__ import annotations

from typing import Any

import click

from isic2020.catalog.manifest import FORMAT_CHOICES, SPLIT_CHOICES
from isic2020.cli.app import (
    bars,
    cli,
    common_options,
    err,
    output_options,
    run_command,
)
from isic2020.cli.checking import verify


@cli.command(short_help="Patient-grouped, stratified cross-validation folds.")
@common_options
@click.option(
    "-k", "--folds", "k", type=click.IntRange(min=2), default=5, show_default=True,
    help="Number of folds.",
)
@click.option("--k", "k_old", type=click.IntRange(min=2), default=None, hidden=True,
              help="The old spelling of -k/--folds.")
@click.option("--seed", type=int, default=42, show_default=True, help="Same seed, same folds.")
@click.option("--drop-duplicates", is_flag=True, help="Leave out image_name_2 of each pair.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where to write image_name,patient_id,fold [default: DATA/folds.csv].",
)
@output_options
def folds(
    data_dir: str | None,
    manifest: str | None,
    k: int,
    k_old: int | None,
    seed: int,
    drop_duplicates: bool,
    out: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Patient-grouped folds stratified by malignancy and images per patient."""
    from isic2020.commands.folds import make_folds

    k = k_old if k_old is not None else k
    run_command(lambda: make_folds(k=k, seed=seed, drop_duplicates=drop_duplicates,
                                   data_dir=data_dir, manifest=manifest, out=out),
                as_json, quiet)


@cli.command(short_help="Counts: images, patients, diagnoses, sites, missing values.")
@common_options
@output_options
def stats(data_dir: str | None, manifest: str | None, as_json: bool, quiet: bool) -> None:
    """Images, patients, malignant, diagnoses, sites, missing values, duplicates."""
    from isic2020.commands.stats import compute_stats

    run_command(lambda: compute_stats(data_dir=data_dir, manifest=manifest), as_json, quiet)


@cli.command(short_help="Hard-link the data into DEST in another layout, or write shards.")
@common_options
@click.option(
    "--layout",
    type=click.Choice(["kaggle", "webdataset", "parquet"]),
    default="kaggle",
    show_default=True,
    help="kaggle: train.csv, test.csv, jpeg/{train,test}/, {train,test}/*.dcm. webdataset: "
    "tar shards (KEY.jpg, KEY.json, KEY.cls). parquet: Hugging Face datasets' Image encoding.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "test", "all"]),
    default="all",
    show_default=True,
    help="Shards of which split (webdataset, parquet; all: test too when on disk).",
)
@click.option(
    "--format",
    "image_format",
    default="jpeg",
    show_default=True,
    help="Images for the shards: jpeg (the originals) or a resized folder such as jpeg-512.",
)
@click.option(
    "--shard-size",
    default="256MB",
    show_default=True,
    help="Largest shard (webdataset, parquet): 256MB, 1GB, or bytes.",
)
@click.option(
    "--dicom",
    type=click.Choice(["auto", "corrected", "original"]),
    default="auto",
    show_default=True,
    help="Which DICOM to export as *.dcm (auto: corrected when on disk).",
)
@click.argument("dest", type=click.Path(file_okay=False))
@output_options
def export(
    data_dir: str | None,
    manifest: str | None,
    layout: str,
    dicom: str,
    split: str,
    image_format: str,
    shard_size: str,
    dest: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Hard-link the data into DEST in another layout (copies across file systems), or write
    WebDataset / Parquet training shards (deterministic, resumable, with an index).

    For shards DEST may be s3://bucket/prefix (credentials and AWS_ENDPOINT_URL from the
    standard AWS variables): the same bytes as a folder export, uploaded shard by shard."""
    from isic2020.commands.export import export as do_export
    from isic2020.commands.export_shards import ShardOptions

    shards = ShardOptions(layout, split, image_format, shard_size)
    run_command(lambda: do_export(dest, layout=layout, data_dir=data_dir, manifest=manifest,
                           dicom=dicom, shards=shards), as_json, quiet)




# --- resize (issue 15) ---
class _VerifyFormat(click.ParamType):
    """``verify --format``: the fetched formats, or a resized folder (``jpeg-512``)."""

    name = "format"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from isic2020.store.recipe import ResizedFormat

        if value in FORMAT_CHOICES or ResizedFormat.parse(str(value)) is not None:
            return str(value)
        self.fail(f"{value!r} is not one of {', '.join(FORMAT_CHOICES)} or jpeg-N[-fit|-squash]",
                  param, ctx)


for _param in verify.params:
    if _param.name == "fmt":
        _param.type = _VerifyFormat()
        _param.help = (_param.help or "") + " jpeg-N[-MODE]: a folder made by `isic2020 resize`."


@cli.command(short_help="Resize the JPEGs into DATA/jpeg-N (a training set, reproducible).")
@click.option("--size", type=click.IntRange(16, 4096), required=True,
              help="Output size in pixels (crop and squash: N x N; fit: the long side).")
@click.option("--mode", type=click.Choice(["crop", "fit", "squash"]), default="crop",
              show_default=True,
              help="crop: short side N, centre square; fit: long side N, aspect kept; "
              "squash: N x N, aspect lost. Other than crop, the folder is jpeg-N-MODE.")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="JPEG quality of the outputs.")
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default="all", show_default=True,
              help="Which split.")
@click.option("--format", "fmt", type=click.Choice(["jpeg"]), default="jpeg", show_default=True,
              help="The source images (the JPEGs).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: every core].")
@common_options
@output_options
def resize(
    size: int,
    mode: str,
    quality: int,
    split: str,
    fmt: str,
    workers: int | None,
    data_dir: str | None,
    manifest: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Resize DATA/jpeg/{train,test} into DATA/jpeg-N/{train,test}, recording the recipe."""
    from isic2020.commands.resize import resize as do_resize

    run_command(
        lambda: do_resize(
            size=size,
            mode=mode,
            quality=quality,
            split=split,
            fmt=fmt,
            workers=workers,
            data_dir=data_dir,
            progress=bars(quiet),
            log=None if quiet else err,
        ),
        as_json,
        quiet,
    )


