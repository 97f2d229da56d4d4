"""The command group and what every command shares: the one error mapper
(:func:`run_command`: an exception becomes one stderr line and an exit code), the ``--json``
envelope built in one place (:func:`envelope`), the common options, and the entry point.

The allocator settings of :func:`flat_heap` are here and not in the library because they
belong to the command's process: a program that imports isic2020 keeps its own.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from isic2020 import config
from isic2020.catalog.manifest import FORMAT_CHOICES, SPLIT_CHOICES
from isic2020.cli import logs
from isic2020.errors import (
    EXIT_DOWNLOAD,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Isic2020Error,
    is_permission_error,
    unreadable,
)
from isic2020.report import configure as configure_progress
from isic2020.report import write_line
from isic2020.store import libc
from isic2020.version import __version__

F = TypeVar("F", bound=Callable[..., Any])
ENV_MIRROR = "ISIC2020_MIRROR"


def err(msg: str) -> None:
    """One line on stderr (never inside a progress bar), and in the ``--log-file``."""
    write_line(f"isic2020: {msg}")
    logs.to_file(msg)


def bars(quiet: bool) -> bool:
    """Progress unless --quiet: bars on a terminal, a plain line now and then elsewhere."""
    return not quiet


#: Version of the ``--json`` document's envelope (``command``, ``ok``, ``exit_code``, ``error``).
#: Raised when a key is renamed or removed; adding keys keeps it.
JSON_SCHEMA = 1


def command_name() -> str:
    ctx = click.get_current_context(silent=True)
    return ctx.info_name if ctx is not None and ctx.info_name else "isic2020"


def envelope(exit_code: int) -> dict[str, Any]:
    """The keys every ``--json`` document starts with, whatever the command and its outcome."""
    return {
        "command": command_name(),
        "ok": exit_code == 0,
        "exit_code": exit_code,
        "isic2020_version": __version__,
        "schema": JSON_SCHEMA,
    }


def rounded(value: Any, key: str = "") -> Any:
    """The document with every duration and time (a key ending in ``seconds`` or ``_at``)
    rounded to milliseconds, whichever part of the library measured it: one rule for every
    command's JSON."""
    if isinstance(value, dict):
        return {k: rounded(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, key) for v in value]
    if isinstance(value, float) and key.endswith(("seconds", "_at")):
        return round(value, 3)
    return value


def emit(report: Any, as_json: bool, quiet: bool) -> None:
    if as_json:
        code = getattr(report, "exit_code", 0)
        doc = {**envelope(code), **rounded(report.to_dict())}
        doc.update(ok=code == 0, exit_code=code)  # one meaning for every command
        click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))
    elif not quiet:
        for line in report.summary_lines():
            click.echo(line)


def fail(as_json: bool, exit_code: int, kind: str, line: str, error: Any = None) -> None:
    """End the command: the JSON document still goes to stdout (with the error), one line to
    stderr, and the exit code."""
    if as_json:
        doc = envelope(exit_code)
        message = getattr(error, "message", None)
        doc["error"] = {
            "kind": kind,
            "message": " ".join(message.split()) if message else line,
            "hint": getattr(error, "hint", None),
        }
        click.echo(json.dumps(doc, indent=2))
    err(line if kind == "interrupted" else f"error: {line}")
    sys.exit(exit_code)


def run_command(fn: Callable[[], Any], as_json: bool, quiet: bool) -> None:
    """Run a library call; map its errors to one stderr line and an exit code."""
    ctx = click.get_current_context(silent=True)
    choice = logs.LogChoice() if ctx is None else ctx.meta.get(_LOG_CHOICE, logs.LogChoice())
    with contextlib.ExitStack() as stack:
        _run_logged(stack, choice, fn, as_json, quiet)


def _run_logged(stack: contextlib.ExitStack, choice: logs.LogChoice, fn: Callable[[], Any],
                as_json: bool, quiet: bool) -> None:
    try:
        stack.enter_context(logs.logging_for(choice, quiet))
        configure_progress(interval=config.load().progress_interval)
        result = fn()
    except Isic2020Error as exc:
        fail(as_json, exc.exit_code, type(exc).__name__, exc.one_line(), exc)
    except KeyboardInterrupt:
        fail(
            as_json, EXIT_INTERRUPTED, "interrupted",
            "interrupted; what finished is kept: run the same command again to resume",
        )
    except Exception as exc:  # a bug: still one line, the traceback on request
        if config.flag(config.DEBUG, False):
            raise
        if is_permission_error(exc):  # a folder of a shared dataset this user may not read
            error = unreadable(getattr(exc, "filename", None), exc)
            fail(as_json, error.exit_code, type(error).__name__, error.one_line(), error)
        fail(
            as_json, EXIT_DOWNLOAD, "internal",
            f"internal error {type(exc).__name__}: {exc}; please report it "
            "(set ISIC2020_DEBUG=1 to see the traceback)",
        )
    emit(result, as_json, quiet)
    code = getattr(result, "exit_code", 0)
    if code:
        err(f"error: {failure_summary(result)}")
    sys.exit(code)


def failure_summary(report: Any) -> str:
    """One line for a report that ends in a non-zero exit (the details are on stdout)."""
    checked = getattr(report, "verification", None) or report
    failed = checked.failed() if hasattr(checked, "failed") else []
    what = ", ".join(c.name for c in failed)
    advice = (checked.advice() if hasattr(checked, "advice")
              else "replace what is damaged (delete it and run `isic2020 fetch`)")
    return (f"verification failed{': ' + what if what else ''}; see the report (--json for "
            f"every problem), {advice}")


def common_options(fn: F) -> F:
    fn = click.option(
        "--manifest",
        type=click.Path(dir_okay=False),
        envvar="ISIC2020_MANIFEST",
        help="Manifest TOML to use instead of the bundled one [env: ISIC2020_MANIFEST].",
    )(fn)
    fn = click.option(
        "--data-dir",
        # not readable=True: a folder this user may not read is the command's "permission
        # denied" (exit 3, like any unreadable part of the data), not a usage error
        type=click.Path(file_okay=False, readable=False),
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
        "in order [env: ISIC2020_MIRROR, space separated]: http(s)://, s3://, file:// or a "
        "local folder path.",
    )


_LOG_CHOICE = "isic2020.log_choice"


def _log_choice(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """``--verbose``/``--log-file`` are kept for :func:`run_command` (no command parameter)."""
    choice = ctx.meta.get(_LOG_CHOICE, logs.LogChoice())
    if param.name == "verbose":
        choice = logs.LogChoice(bool(value), choice.log_file)
    elif value:
        choice = logs.LogChoice(choice.verbose, str(value))
    ctx.meta[_LOG_CHOICE] = choice


def output_options(fn: F) -> F:
    fn = click.option("--log-file", type=click.Path(dir_okay=False), default=None,
                      expose_value=False, callback=_log_choice, metavar="FILE",
                      help="Append every message and the --verbose lines, with timestamps, "
                      "to FILE.")(fn)
    fn = click.option("--verbose", "-v", is_flag=True, expose_value=False, callback=_log_choice,
                      help="Say each decision: host chosen, resumed at byte N, retries, "
                      "throttle changes.")(fn)
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


def flat_heap() -> None:
    """Keep glibc from growing the heap per thread, and from paying for memory per block (the
    command's process only; the library leaves the allocator alone).

    Two arenas bound the heaps: with glibc's default, 16 connections put their read buffers
    into up to 16 per-thread arenas that are never given back (a measurable share of a
    complete fetch's peak RSS; see README, Performance). The mmap threshold is fixed (never
    raised by a free) at 512 KiB, above the engine's 256 KiB socket reads, and the heap is
    trimmed only past 4 MiB free at its top: below that, every block the connections read
    was an mmap, a page fault per 4 KiB and a munmap, a third of a fast download's CPU.
    What stays in the heap is bounded: the blocks in flight (one per connection) plus the
    trim threshold per arena; anything of 512 KiB or more is still returned on free.

    pyarrow (which pandas 3 imports whenever it is installed, and stores strings in) gets the
    same allocator unless the user chose one (``ARROW_DEFAULT_MEMORY_POOL``): its default,
    mimalloc, keeps what it freed for reuse, which put ``folds`` of the 33k-row ground truth
    and the parquet export over the 150 MB of peak RSS every command keeps to. The price is
    the parquet export's: its buffers above the mmap threshold are mapped and faulted in anew,
    about a third more system CPU (see README, Performance); the bound is the standard."""
    if not config.flag(config.MALLOC, True):
        return
    os.environ.setdefault(config.ARROW_POOL, "system")  # read by pyarrow at its first allocation
    libc.mallopt(libc.M_MMAP_THRESHOLD, 512 * 1024)  # fixed, so not raised by the first free
    libc.mallopt(libc.M_TRIM_THRESHOLD, 4 * 1024 * 1024)
    libc.mallopt(libc.M_ARENA_MAX, 2)


def skip_final_collection() -> None:
    """At the interpreter's exit, leave out its last collection of cyclic garbage.

    Why: after the last ``atexit`` handler the interpreter collects once more, walking every
    object still alive (the imported modules, a fetch's plans and tables); that is most of the
    time between a command's last line and its exit, and the kernel frees the memory anyway.
    What still runs: every ``atexit`` handler registered before this one (logging's flush,
    ``weakref.finalize`` callbacks), and reference counting. Nothing of ours relies on a
    finalizer of cyclic garbage: files, temporaries and children are closed, removed and
    reaped explicitly before the command returns."""
    gc.disable()
    gc.freeze()


def usage_line(exc: click.ClickException) -> str:
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
    flat_heap()
    atexit.register(skip_final_collection)
    try:
        code = cli.main(args=argv, prog_name="isic2020", standalone_mode=False)
        if isinstance(code, int) and code:  # ctx.exit(N) is returned, not raised, here
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err("interrupted; run the same command again to resume")
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        err(f"error: {usage_line(exc)}")
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err("interrupted; what finished is kept: run the same command again to resume")
        sys.exit(EXIT_INTERRUPTED)

