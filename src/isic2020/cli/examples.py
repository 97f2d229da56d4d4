"""What ``--help`` shows below the options: a few examples per command, and for ``isic2020
--help`` the exit codes and how to turn on shell completion.

Kept apart from the commands' definitions so that every command gets its examples the same way
(:func:`add_epilogs`, called once all commands are registered) and a test can check that none
is missing. The exit codes are the README's table in short; a change to one is a change to both.
``\\b`` tells click to keep the lines below it as written (no rewrapping).
"""

from __future__ import annotations

import click

EXIT_CODES = """\b
Exit codes:
  0    success
  1    the data failed verification (a checksum, a count, a damaged image or archive,
       metadata that fails its checks)
  2    usage or input error (a bad option or manifest; nothing there yet: run fetch first)
  3    download, network, disk, permission or lock problem, or an internal error
  130  interrupted (Ctrl-C, SIGTERM): run the same command again to resume

\b
Each command's --help has examples: isic2020 fetch --help.
Shell completion (bash; zsh_source, fish_source likewise):
  eval "$(_ISIC2020_COMPLETE=bash_source isic2020)"
"""

#: 1-3 example command lines per command, each with what it does.
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "fetch": [
        ("isic2020 fetch --split train --data-dir ./isic2020-data",
         "the training JPEGs and metadata, verified and unpacked"),
        ("isic2020 fetch --format none", "only the metadata CSVs (a few MB)"),
        ("isic2020 fetch --split train --sample 500 --mirror http://lab-mirror/isic/",
         "500 images, stratified by target, from a lab's mirror"),
    ],
    "verify": [
        ("isic2020 verify --split train --data-dir ./isic2020-data", "what fetch put there"),
        ("isic2020 verify --deep", "also decode every JPEG"),
        ("isic2020 verify --against SHA256SUMS --data-dir /mnt/copy",
         "a copy against its checksum list"),
    ],
    "inspect": [
        ("isic2020 inspect --split train", "members and sizes of the remote training zip"),
    ],
    "list": [
        ("isic2020 list", "every file, its URLs and its state here"),
        ("isic2020 list --json", "the same for scripts"),
    ],
    "extract": [
        ("isic2020 extract --split train", "unpack DATA/archives' training zip again"),
    ],
    "folds": [
        ("isic2020 folds -k 5 --seed 42", "DATA/folds.csv: image_name,patient_id,fold"),
        ("isic2020 folds --drop-duplicates --out folds.csv", "without image_name_2 of each pair"),
    ],
    "stats": [
        ("isic2020 stats", "images, patients, diagnoses, sites, missing values"),
        ("isic2020 stats --json", "the same for scripts"),
    ],
    "export": [
        ("isic2020 export ./kaggle", "train.csv, test.csv, jpeg/{train,test}/ as Kaggle has them"),
        ("isic2020 export --layout webdataset --format jpeg-512 ./shards",
         "WebDataset tar shards of the resized copies"),
    ],
    "resize": [
        ("isic2020 resize --size 512", "DATA/jpeg-512: short side 512, centre square"),
        ("isic2020 resize --size 384 --mode fit", "DATA/jpeg-384-fit: long side 384"),
    ],
    "status": [
        ("isic2020 status", "what is where under DATA, and the disk each part uses"),
    ],
    "clean": [
        ("isic2020 clean --dry-run", "what would be removed"),
        ("isic2020 clean --archives", "also the zips whose images are all on disk"),
    ],
    "checksums": [
        ("isic2020 checksums --out SHA256SUMS", "a SHA256SUMS of every image"),
        ("cd DATA && sha256sum -c SHA256SUMS", "check it without isic2020"),
    ],
    "pin": [
        ("isic2020 pin > pinned.toml", "the manifest of what is verified here"),
        ("isic2020 fetch --manifest pinned.toml --mirror http://lab-mirror/isic/",
         "another machine demands those bytes"),
    ],
    "mirror": [
        ("isic2020 mirror /srv/isic2020", "publish the verified files to a folder"),
        ("isic2020 mirror s3://lab-bucket/isic2020 --split train", "or to a bucket"),
    ],
}


def examples_epilog(name: str) -> str:
    """The ``Examples:`` block of one command's help (empty for a command without any)."""
    rows = EXAMPLES.get(name, [])
    if not rows:
        return ""
    lines = ["\b", "Examples:"]
    for command, what in rows:
        lines += [f"  {command}", f"      {what}"]
    return "\n".join(lines)


def add_epilogs(group: click.Group) -> None:
    """Put the exit codes under the group's help and examples under every command's."""
    group.epilog = EXIT_CODES
    for name, command in group.commands.items():
        command.epilog = examples_epilog(name) or None
