"""The ``isic2020`` command line: parses options, calls the library, prints, exits.

Conventions (documented in the README): results go to stdout (one JSON document with
``--json``), progress and messages to stderr; every failure is one line on stderr starting
``isic2020: error:`` and a documented exit code (0 ok, 1 verification failed, 2 usage or input,
3 download/network/disk, 130 interrupted). Nothing here prompts.

Everything the commands do is in the library (``isic2020.commands``, ``isic2020.checks``, ...);
``app`` holds the group, the one error mapper and the ``--json`` envelope; one module per group
of commands registers its commands on the group when imported (below).
"""

from isic2020.cli import checking, cluster, data, fetching  # noqa: F401 - registers commands
from isic2020.cli.app import cli, main
from isic2020.cli.examples import add_epilogs

add_epilogs(cli)

__all__ = ["cli", "main"]
