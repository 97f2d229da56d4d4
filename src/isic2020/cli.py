"""The ``isic2020`` command line: parses options, calls the library, prints, exits.

Conventions (documented in the README): results go to stdout (one JSON document with
``--json``), progress and messages to stderr; every failure is one line on stderr starting
``isic2020: error:`` and a documented exit code (0 ok, 1 verification failed, 2 usage or input,
3 download/network/disk, 130 interrupted). Nothing here prompts.

Everything the commands do is in the library (``isic2020.commands``, ``isic2020.checks``, ...);
this module parses options, maps errors (``_run``: the one error mapper) and prints, with the
``--json`` envelope built in one place (``_envelope``). The allocator settings of ``_flat_heap``
are here and not in the library because they belong to the command's process: a program that
imports isic2020 keeps its own.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from isic2020 import config
from isic2020.catalog.manifest import FORMAT_CHOICES, SPLIT_CHOICES
from isic2020.errors import EXIT_DOWNLOAD, EXIT_INTERRUPTED, EXIT_USAGE, Isic2020Error
from isic2020.version import __version__

F = TypeVar("F", bound=Callable[..., Any])
ENV_MIRROR = "ISIC2020_MIRROR"


def _err(msg: str) -> None:
    click.echo(f"isic2020: {msg}", err=True)


def _bars(quiet: bool) -> bool:
    """Progress bars only for a person watching: not with --quiet, not into a log file."""
    return not quiet and sys.stderr.isatty()


#: Version of the ``--json`` document's envelope (``command``, ``ok``, ``exit_code``, ``error``).
#: Raised when a key is renamed or removed; adding keys keeps it.
JSON_SCHEMA = 1


def _command_name() -> str:
    ctx = click.get_current_context(silent=True)
    return ctx.info_name if ctx is not None and ctx.info_name else "isic2020"


def _envelope(exit_code: int) -> dict[str, Any]:
    """The keys every ``--json`` document starts with, whatever the command and its outcome."""
    return {
        "command": _command_name(),
        "ok": exit_code == 0,
        "exit_code": exit_code,
        "isic2020_version": __version__,
        "schema": JSON_SCHEMA,
    }


def _emit(report: Any, as_json: bool, quiet: bool) -> None:
    if as_json:
        code = getattr(report, "exit_code", 0)
        doc = {**_envelope(code), **report.to_dict()}
        doc.update(ok=code == 0, exit_code=code)  # one meaning for every command
        click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))
    elif not quiet:
        for line in report.summary_lines():
            click.echo(line)


def _fail(as_json: bool, exit_code: int, kind: str, line: str, error: Any = None) -> None:
    """End the command: the JSON document still goes to stdout (with the error), one line to
    stderr, and the exit code."""
    if as_json:
        doc = _envelope(exit_code)
        message = getattr(error, "message", None)
        doc["error"] = {
            "kind": kind,
            "message": " ".join(message.split()) if message else line,
            "hint": getattr(error, "hint", None),
        }
        click.echo(json.dumps(doc, indent=2))
    _err(line if kind == "interrupted" else f"error: {line}")
    sys.exit(exit_code)


def _run(fn: Callable[[], Any], as_json: bool, quiet: bool) -> None:
    """Run a library call; map its errors to one stderr line and an exit code."""
    try:
        report = fn()
    except Isic2020Error as exc:
        _fail(as_json, exc.exit_code, type(exc).__name__, exc.one_line(), exc)
    except KeyboardInterrupt:
        _fail(
            as_json, EXIT_INTERRUPTED, "interrupted",
            "interrupted; what finished is kept: run the same command again to resume",
        )
    except Exception as exc:  # a bug: still one line, the traceback on request
        if config.flag(config.DEBUG, False):
            raise
        _fail(
            as_json, EXIT_DOWNLOAD, "internal",
            f"internal error {type(exc).__name__}: {exc}; please report it "
            "(set ISIC2020_DEBUG=1 to see the traceback)",
        )
    _emit(report, as_json, quiet)
    code = getattr(report, "exit_code", 0)
    if code:
        _err(f"error: {_failure_summary(report)}")
    sys.exit(code)


def _failure_summary(report: Any) -> str:
    """One line for a report that ends in a non-zero exit (the details are on stdout)."""
    checked = getattr(report, "verification", None) or report
    failed = checked.failed() if hasattr(checked, "failed") else []
    what = ", ".join(c.name for c in failed) or "see the report"
    return (
        f"verification failed: {what}; see the report (--json for every problem), replace "
        "what is damaged (delete it and run `isic2020 fetch`)"
    )


def common_options(fn: F) -> F:
    fn = click.option(
        "--manifest",
        type=click.Path(dir_okay=False),
        envvar="ISIC2020_MANIFEST",
        help="Manifest TOML to use instead of the bundled one [env: ISIC2020_MANIFEST].",
    )(fn)
    fn = click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        envvar="ISIC2020_DATA_DIR",
        help="Data directory [env: ISIC2020_DATA_DIR; default: ~/.local/share/isic2020].",
    )(fn)
    return fn


def selection_options(default_format: str = "jpeg") -> Callable[[F], F]:
    def deco(fn: F) -> F:
        fn = click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMAT_CHOICES),
            default=default_format,
            show_default=True,
            help="jpeg; dicom (corrected DICOM); dicom-original (first release); none (CSVs only).",
        )(fn)
        fn = click.option(
            "--split",
            type=click.Choice(SPLIT_CHOICES),
            default="all",
            show_default=True,
            help="Which split.",
        )(fn)
        return fn

    return deco


def mirror_option(what: str) -> Callable[[F], F]:
    """``--mirror URL`` (repeatable), or ``$ISIC2020_MIRROR`` split on spaces."""
    return click.option(
        "--mirror",
        "mirrors",
        multiple=True,
        metavar="URL",
        envvar=ENV_MIRROR,
        help=f"{what} <URL>/<official name> instead of the manifest's hosts; repeatable, tried "
        "in order [env: ISIC2020_MIRROR, space separated]. http://, file:// and s3:// only "
        "this way.",
    )


def output_options(fn: F) -> F:
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bars, no summary.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="One JSON report on stdout.")(fn)
    return fn


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    invoke_without_command=True,
)
@click.version_option(__version__, prog_name="isic2020")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Fetch the ISIC 2020 Challenge Dataset complete and verified."""
    if ctx.invoked_subcommand is None:  # bare `isic2020`: the help, as a usage error
        click.echo(ctx.get_help())
        ctx.exit(EXIT_USAGE)


@cli.command()
@selection_options()
@common_options
@mirror_option("Fetch")
@click.option(
    "--connections",
    "-c",
    type=click.IntRange(1, 64),
    default=None,
    help="Parallel connections per file [default: 16].",
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
    "--direct",
    is_flag=True,
    help="Read the images straight out of the remote zip: the archive is never stored.",
)
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
    direct: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Download, verify, unpack and check the chosen split and format."""
    from isic2020.commands.fetch import FetchHow, FetchPlace, FetchWhat
    from isic2020.commands.fetch import fetch as do_fetch

    what = FetchWhat(split=split, fmt=fmt, images=images, sample=sample, seed=seed, where=where)
    place = FetchPlace(data_dir=data_dir, manifest=manifest, mirrors=mirrors,
                       keep_archives=keep_archives)
    how = FetchHow(connections=connections, extract=not no_extract, direct=direct,
                   dry_run=dry_run, lock_timeout=lock_timeout, progress=_bars(quiet),
                   log=None if quiet else _err)
    _run(lambda: do_fetch(what, place, how), as_json, quiet)


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
            log=None if quiet else _err,
        )

    _run(call, as_json, quiet)


@cli.command("list", short_help="Every manifest entry: URLs, size and local state.")
@common_options
@mirror_option("Show")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def list_cmd(
    data_dir: str | None, manifest: str | None, mirrors: tuple[str, ...], as_json: bool
) -> None:
    """Every manifest entry with its URLs, published size and local state."""
    from isic2020.commands.listing import list_files

    _run(lambda: list_files(data_dir=data_dir, manifest=manifest, mirrors=mirrors), as_json, False)


@cli.command()
@selection_options()
@common_options
@output_options
def extract(
    split: str, fmt: str, data_dir: str | None, manifest: str | None, as_json: bool, quiet: bool
) -> None:
    """Unpack archives already in DATA/archives into the fixed layout."""
    from isic2020.commands.extract import extract as do_extract

    _run(
        lambda: do_extract(
            split=split,
            fmt=fmt,
            data_dir=data_dir,
            manifest=manifest,
            progress=not quiet and sys.stderr.isatty(),
        ),
        as_json,
        quiet,
    )


@cli.command()
@selection_options()
@common_options
@click.option("--deep", is_flag=True, help="Decode JPEGs; cross-check DICOM headers with the CSV.")
@click.option("--against", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Check the images against a SHA256SUMS from `isic2020 checksums` instead.")
@output_options
def verify(
    split: str,
    fmt: str,
    data_dir: str | None,
    manifest: str | None,
    deep: bool,
    against: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Prove that what is on disk is complete and intact."""
    if against is not None:  # issue 13: the list is the whole truth (checks/against.py)
        from isic2020.checks.against import verify_against

        _run(lambda: verify_against(against, data_dir, progress=_bars(quiet)), as_json, quiet)
    from isic2020.checks.verify import verify as do_verify

    _run(lambda: do_verify(split=split, fmt=fmt, data_dir=data_dir, manifest=manifest,
                           deep=deep, progress=_bars(quiet)), as_json, quiet)


@cli.command(short_help="Patient-grouped, stratified cross-validation folds.")
@common_options
@click.option(
    "-k", "--k", "k", type=click.IntRange(min=2), default=5, show_default=True, help="Folds."
)
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
    seed: int,
    drop_duplicates: bool,
    out: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Patient-grouped folds stratified by malignancy and images per patient."""
    from isic2020.commands.folds import make_folds

    _run(lambda: make_folds(k=k, seed=seed, drop_duplicates=drop_duplicates, data_dir=data_dir,
                            manifest=manifest, out=out), as_json, quiet)


@cli.command(short_help="Counts: images, patients, diagnoses, sites, missing values.")
@common_options
@output_options
def stats(data_dir: str | None, manifest: str | None, as_json: bool, quiet: bool) -> None:
    """Images, patients, malignant, diagnoses, sites, missing values, duplicates."""
    from isic2020.commands.stats import compute_stats

    _run(lambda: compute_stats(data_dir=data_dir, manifest=manifest), as_json, quiet)


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
    WebDataset / Parquet training shards (deterministic, resumable, with an index)."""
    from isic2020.commands.export import export as do_export
    from isic2020.commands.export_shards import ShardOptions

    shards = ShardOptions(layout, split, image_format, shard_size)
    _run(lambda: do_export(dest, layout=layout, data_dir=data_dir, manifest=manifest,
                           dicom=dicom, shards=shards), as_json, quiet)


# --- status, clean, checksums (issue 13) ---


def _bars(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@cli.command(short_help="What is where under DATA, and the disk each part uses.")
@common_options
@output_options
def status(data_dir: str | None, manifest: str | None, as_json: bool, quiet: bool) -> None:
    """Each manifest file's state, each image folder's images and disk use, the disk used by
    partials, staging, caches and archives, and the free space. Reads only."""
    from isic2020.commands.status import status as do_status

    _run(lambda: do_status(data_dir=data_dir, manifest=manifest), as_json, quiet)


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

    _run(
        lambda: do_clean(data_dir=data_dir, manifest=manifest, archives=archives,
                         dry_run=dry_run, lock_timeout=lock_timeout,
                         log=None if quiet else _err),
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
                              progress=_bars(quiet))
        if out is None and not as_json:
            sys.stdout.write(report.text())
            sys.stdout.flush()
            if not quiet:
                for line in report.summary_lines():
                    _err(line)
            sys.exit(0)
        return report

    _run(call, as_json, quiet)


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

    _run(
        lambda: do_resize(
            size=size,
            mode=mode,
            quality=quality,
            split=split,
            fmt=fmt,
            workers=workers,
            data_dir=data_dir,
            progress=not quiet and sys.stderr.isatty(),
            log=None if quiet else _err,
        ),
        as_json,
        quiet,
    )


# --- pin, mirror (issue 16) ---
@cli.command(short_help="The manifest with every verified file's size, ETag and sha256.")
@common_options
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for another isic2020 on the same data directory.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def pin(data_dir: str | None, manifest: str | None, lock_timeout: float | None,
        as_json: bool) -> None:
    """Print the manifest with the exact size, ETag and sha256 of every verified file
    (`isic2020 pin > pinned.toml`; then `fetch --manifest pinned.toml` demands those bytes)."""
    from isic2020.commands.pin import pin as do_pin

    _run(lambda: do_pin(data_dir=data_dir, manifest=manifest, lock_timeout=lock_timeout),
         as_json, False)


@cli.command(short_help="Publish the verified files to a folder or s3://bucket/prefix.")
@common_options
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default="all", show_default=True,
              help="Which split's files.")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for another isic2020 on the same data directory.")
@click.argument("dest")
@output_options
def mirror(data_dir: str | None, manifest: str | None, split: str, lock_timeout: float | None,
           dest: str, as_json: bool, quiet: bool) -> None:
    """Publish the verified official files and the pinned manifest (isic2020-pinned.toml) to
    DEST, a folder or s3://bucket/prefix (credentials: the AWS chain; AWS_ENDPOINT_URL)."""
    from isic2020.commands.mirror import mirror as do_mirror

    _run(lambda: do_mirror(dest, split=split, data_dir=data_dir, manifest=manifest,
                           lock_timeout=lock_timeout, log=None if quiet else _err),
         as_json, quiet)


def _flat_heap() -> None:
    """Keep glibc from growing the heap per thread (the command's process only; the library
    leaves the allocator alone). The engine's 16 connections each free and reallocate 256 KiB
    read buffers: with glibc's default the mmap threshold then rises to 256 KiB and those
    buffers move into up to 16 per-thread arenas that are never given back, which cost a
    complete fetch ~20 MB of peak RSS (164 -> see README, Performance). A fixed threshold keeps
    them in mmap (returned on free) and two arenas bound the rest."""
    if not sys.platform.startswith("linux") or not config.flag(config.MALLOC, True):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return
    mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, so not raised by the first free
    mallopt(-8, 2)  # M_ARENA_MAX


def _usage_line(exc: click.ClickException) -> str:
    """click's message as one line, pointing at the help of the command that refused it."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "isic2020"
    return f"{message}; see '{where} --help'"


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    # A file-size limit (RLIMIT_FSIZE) must surface as EFBIG, a clean "disk" error, not kill us.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # CI cancellation sends SIGTERM: treat it like Ctrl-C so state is left resumable.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    _flat_heap()
    try:
        code = cli.main(args=argv, prog_name="isic2020", standalone_mode=False)
        if isinstance(code, int) and code:  # ctx.exit(N) is returned, not raised, here
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _err("interrupted; run the same command again to resume")
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        _err(f"error: {_usage_line(exc)}")
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        _err("interrupted; what finished is kept: run the same command again to resume")
        sys.exit(EXIT_INTERRUPTED)

