"""``verify``, ``status``, ``clean``, ``checksums``: what is on disk, and proving it."""

from __future__ import annotations

import sys
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


@cli.command()
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default=None,
              help="Which split [default: the splits fetched into DATA].")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default=None,
              help="jpeg, dicom, dicom-original or none (CSVs only); default: the formats "
              "fetched into DATA.")
@common_options
@click.option("--deep", is_flag=True, help="Decode JPEGs; cross-check DICOM headers with the CSV.")
@click.option("--against", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Check the images against a SHA256SUMS from `isic2020 checksums` instead.")
@output_options
def verify(
    split: str | None,
    fmt: str | None,
    data_dir: str | None,
    manifest: str | None,
    deep: bool,
    against: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Prove that what is on disk is complete and intact.

    Without --split and --format: what was fetched into DATA."""
    if against is not None:  # issue 13: the list is the whole truth (checks/against.py)
        from isic2020.checks.against import verify_against

        run_command(lambda: verify_against(against, data_dir, progress=bars(quiet)), as_json, quiet)
    from isic2020.checks.verify import verify as do_verify

    run_command(lambda: do_verify(split=split, fmt=fmt, data_dir=data_dir, manifest=manifest,
                           deep=deep, progress=bars(quiet)), as_json, quiet)




# --- status, clean, checksums (issue 13) ---



@cli.command(short_help="What is where under DATA, and the disk each part uses.")
@common_options
@output_options
def status(data_dir: str | None, manifest: str | None, as_json: bool, quiet: bool) -> None:
    """Each manifest file's state, each image folder's images and disk use, the disk used by
    partials, staging, caches and archives, and the free space. Reads only."""
    from isic2020.commands.status import status as do_status

    run_command(lambda: do_status(data_dir=data_dir, manifest=manifest), as_json, quiet)


@cli.command(short_help="Remove partial downloads, staging and caches (archives on request).")
@common_options
@click.option("--archives", is_flag=True,
              help="Also remove kept archives whose images are all extracted and verified.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for another isic2020 on the same data directory "
              "[default: wait].")
@output_options
def clean(
    data_dir: str | None,
    manifest: str | None,
    archives: bool,
    dry_run: bool,
    lock_timeout: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Remove what only a running or interrupted fetch needs: partial downloads, staging,
    caches, leftover temporaries; with --archives, archives whose images are all on disk."""
    from isic2020.commands.clean import clean as do_clean

    run_command(
        lambda: do_clean(data_dir=data_dir, manifest=manifest, archives=archives,
                         dry_run=dry_run, lock_timeout=lock_timeout,
                         log=None if quiet else err),
        as_json,
        quiet,
    )


@cli.command(short_help="A SHA256SUMS of every image (for verify --against, sha256sum -c).")
@common_options
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default="all", show_default=True,
              help="Which split.")
@click.option("--format", "fmt",
              type=click.Choice((*(f for f in FORMAT_CHOICES if f != "none"), "all")),
              default="all", show_default=True, help="Which image format (all: every one).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the list to FILE (atomically) [default: stdout].")
@output_options
def checksums(
    data_dir: str | None,
    manifest: str | None,
    split: str,
    fmt: str,
    out: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Hash every image into a SHA256SUMS (paths relative to DATA, sorted): check a copy with
    `isic2020 verify --against FILE` or `cd DATA && sha256sum -c FILE`."""
    from isic2020.commands.checksums import checksums as do_checksums

    def call() -> Any:
        report = do_checksums(data_dir=data_dir, split=split, fmt=fmt, out=out,
                              progress=bars(quiet))
        if out is None and not as_json:
            sys.stdout.write(report.text())
            sys.stdout.flush()
            if not quiet:
                for line in report.summary_lines():
                    err(line)
            sys.exit(0)
        return report

    run_command(call, as_json, quiet)


