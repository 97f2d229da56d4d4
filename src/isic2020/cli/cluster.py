"""``pin``, ``mirror``: one node proves the files, every node fetches them from the lab's mirror."""

from __future__ import annotations

import click

from isic2020.catalog.manifest import SPLIT_CHOICES
from isic2020.cli.app import (
    cli,
    common_options,
    err,
    output_options,
    run_command,
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

    run_command(lambda: do_pin(data_dir=data_dir, manifest=manifest, lock_timeout=lock_timeout),
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

    run_command(lambda: do_mirror(dest, split=split, data_dir=data_dir, manifest=manifest,
                           lock_timeout=lock_timeout, log=None if quiet else err),
         as_json, quiet)


