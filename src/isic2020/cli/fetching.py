"""``fetch``, ``inspect``, ``list``, ``extract``: getting the files."""

from __future__ import annotations

from typing import Any

import click

from isic2020.cli.app import (
    bars,
    cli,
    common_options,
    err,
    mirror_option,
    output_options,
    run_command,
    selection_options,
)
from isic2020.cli.logs import notice


def network_options(fn: Any) -> Any:
    """How hard and how fast to use the network; each wins over its environment variable."""
    seconds = click.FloatRange(min=0, min_open=True)
    for decl, dest, kind, text in reversed((
        ("--limit-rate", "limit_rate", str, "Overall download cap over every connection, "
         "bytes/s: 500K, 10M, 1G (binary, as aria2c); 0 for none [env: ISIC2020_LIMIT_RATE]."),
        ("--timeout", "read_timeout", seconds, "Seconds a request may wait between two "
         "received blocks [default: 30; env: ISIC2020_READ_TIMEOUT]."),
        ("--connect-timeout", "connect_timeout", seconds, "Seconds to open a connection "
         "[default: 10; env: ISIC2020_CONNECT_TIMEOUT]."),
        ("--retry-window", "retry_window", seconds, "Seconds without a new byte before a host "
         "is given up for the next one [default: 300; env: ISIC2020_RETRY_WINDOW]."),
    )):
        metavar = "RATE" if kind is str else "S"
        fn = click.option(decl, dest, type=kind, default=None, metavar=metavar, help=text)(fn)
    return fn


@cli.command()
@selection_options()
@common_options
@mirror_option("Fetch")
@click.option(
    "--connections",
    "-c",
    type=click.IntRange(1, 64),
    default=None,
    help="Parallel connections per file, fixed [default: start at 16, add more while the "
    "rate rises, up to $ISIC2020_MAX_CONNECTIONS (64)].",
)
@click.option("--no-extract", is_flag=True, help="Download and verify archives, do not unpack.")
@click.option(
    "--keep-archives/--no-keep-archives",
    default=True,
    show_default=True,
    help="Keep the zips in DATA/archives after unpacking them.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be transferred and the disk needed.")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds to wait for another isic2020 on the same data directory [default: wait].",
)
@click.option(
    "--images",
    type=click.Path(dir_okay=False),
    default=None,
    help="Fetch only these images: one name per line, or a CSV with an image_name column.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    help="Fetch N images, stratified by target (deterministic for --seed).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option(
    "--where",
    default=None,
    metavar="EXPR",
    help="Fetch the images whose metadata match a pandas query, "
    "e.g. \"target == 1 and sex == 'female'\".",
)
@click.option(
    "--reset-selection",
    is_flag=True,
    help="The subset replaces the one fetched before (images outside it are removed) "
    "instead of adding to it.",
)
@click.option(
    "--direct",
    is_flag=True,
    help="Read the images straight out of the remote zip: the archive is never stored.",
)
@network_options
@output_options
def fetch(
    split: str,
    fmt: str,
    data_dir: str | None,
    manifest: str | None,
    mirrors: tuple[str, ...],
    connections: int | None,
    no_extract: bool,
    keep_archives: bool,
    dry_run: bool,
    lock_timeout: float | None,
    images: str | None,
    sample: int | None,
    seed: int,
    where: str | None,
    reset_selection: bool,
    direct: bool,
    limit_rate: str | None,
    read_timeout: float | None,
    connect_timeout: float | None,
    retry_window: float | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Download, verify, unpack and check the chosen split and format."""
    from isic2020.commands.fetch import FetchHow, FetchPlace, FetchWhat
    from isic2020.commands.fetch import fetch as do_fetch

    what = FetchWhat(split=split, fmt=fmt, images=images, sample=sample, seed=seed, where=where,
                     reset_selection=reset_selection)
    place = FetchPlace(data_dir=data_dir, manifest=manifest, mirrors=mirrors,
                       keep_archives=keep_archives)
    how = FetchHow(connections=connections, extract=not no_extract, direct=direct,
                   dry_run=dry_run, lock_timeout=lock_timeout, progress=bars(quiet),
                   log=notice, limit_rate=limit_rate, read_timeout=read_timeout,
                   connect_timeout=connect_timeout, retry_window=retry_window)
    run_command(lambda: do_fetch(what, place, how), as_json, quiet)


@cli.command(short_help="Read the remote archives' directories (no download).")
@selection_options()
@common_options
@mirror_option("Read")
@output_options
def inspect(
    split: str,
    fmt: str,
    data_dir: str | None,
    manifest: str | None,
    mirrors: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Read the remote archives' directories: members, sizes, names against the metadata."""
    from isic2020.commands.fetch import check_mirrors, download_options
    from isic2020.commands.inspect import inspect as do_inspect

    def call() -> Any:
        opts = download_options()
        return do_inspect(
            split=split,
            fmt=fmt,
            data_dir=data_dir,
            manifest=manifest,
            mirrors=check_mirrors(mirrors),
            timeouts=opts.timeouts,
            retry=opts.retry,
            log=None if quiet else err,
        )

    run_command(call, as_json, quiet)


@cli.command("list", short_help="Every manifest entry: URLs, size and local state.")
@common_options
@mirror_option("Show")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def list_cmd(
    data_dir: str | None, manifest: str | None, mirrors: tuple[str, ...], as_json: bool
) -> None:
    """Every manifest entry with its URLs, published size and local state."""
    from isic2020.commands.listing import list_files

    run_command(lambda: list_files(data_dir=data_dir, manifest=manifest, mirrors=mirrors),
                as_json, False)


@cli.command()
@selection_options()
@common_options
@output_options
def extract(
    split: str, fmt: str, data_dir: str | None, manifest: str | None, as_json: bool, quiet: bool
) -> None:
    """Unpack archives already in DATA/archives into the fixed layout."""
    from isic2020.commands.extract import extract as do_extract

    run_command(
        lambda: do_extract(
            split=split,
            fmt=fmt,
            data_dir=data_dir,
            manifest=manifest,
            progress=bars(quiet),
        ),
        as_json,
        quiet,
    )


