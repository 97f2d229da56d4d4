"""pytest fixtures around the test servers in :mod:`support.servers`.

Import them into ``tests/conftest.py`` (pytest only finds fixtures defined or imported there)::

    from support.fixtures import (  # noqa: F401 - fixtures are found by name
        fault_server,
        nginx_server_factory,
        s3_bucket,
        s3_server,
        served_dir,
    )

and one factory a test module calls at its top, for the pair most fetch tests start from (a
synthetic dataset, and a server of it)::

    dataset, mirror = served_dataset("syn", n_train=24, n_test=6)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from isic2020.synthetic import SyntheticDataset, build_dataset

from .servers import FaultServer, NginxServer, S3Server

#: The URL folder of the official S3 host (``isic-archive.s3.amazonaws.com/challenges/2020/``),
#: so mirrors built from these servers look like the real thing.
ISIC_PREFIX = "/challenges/2020/"

NginxFactory = Callable[..., NginxServer]


@pytest.fixture
def served_dir(tmp_path: Path) -> Path:
    """The folder :func:`fault_server` serves (files written here appear under its prefix)."""
    root = tmp_path / "served"
    root.mkdir()
    return root


@pytest.fixture
def fault_server(served_dir: Path) -> Iterator[FaultServer]:
    """A fresh :class:`FaultServer` per test on ``served_dir`` at ``/challenges/2020/``.

    S3-like single-part md5 ETags by default; change per file with ``set_etag``.
    """
    with FaultServer(served_dir, prefix=ISIC_PREFIX) as server:
        yield server


def served_dataset(folder: str = "syn", **build: Any) -> tuple[Any, Any]:
    """Two fixtures for a test module: ``dataset``, the synthetic dataset
    ``build_dataset(**build)`` makes once per module in a fresh temporary folder named
    ``folder``; and a fresh :class:`FaultServer` serving it at ``/challenges/2020/`` per test,
    so a fault, a throttle or the request log of one test never reaches the next.

    Bind them at the module's top: ``dataset, mirror = served_dataset("syn", n_train=24)``.
    The first is the fixture ``dataset`` whatever it is bound to (the server asks for it by
    that name); the second takes the name it is bound to (``mirror``, ``server``)."""

    @pytest.fixture(scope="module", name="dataset")
    def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
        return build_dataset(tmp_path_factory.mktemp(folder), **build)

    @pytest.fixture
    def server(dataset: SyntheticDataset) -> Iterator[FaultServer]:
        with FaultServer(dataset.root, prefix=ISIC_PREFIX) as srv:
            yield srv

    return dataset, server


@pytest.fixture
def nginx_server_factory(tmp_path: Path) -> Iterator[NginxFactory]:
    """``factory(root, prefix="/challenges/2020/", limit_rate=None) -> NginxServer`` (started).

    Skips the test when nginx is not installed (CI installs it, so there it always runs).
    Every server started is closed at the end of the test.
    """
    if NginxServer.find_binary() is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx); CI installs it")
    started: list[NginxServer] = []
    counter = itertools.count()

    def factory(
        root: str | os.PathLike[str],
        prefix: str = ISIC_PREFIX,
        *,
        limit_rate: int | None = None,
    ) -> NginxServer:
        workdir = tmp_path / f"nginx-{next(counter)}"
        server = NginxServer(root, prefix, limit_rate=limit_rate, workdir=workdir)
        started.append(server)
        return server.start()

    try:
        yield factory
    finally:
        for server in started:
            server.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One moto S3 server for the whole session (state is shared: use unique bucket names)."""
    with S3Server() as server:
        yield server


_bucket_numbers = itertools.count()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket name on :func:`s3_server` (created; objects go public-read)."""
    name = f"isic-test-{os.getpid()}-{next(_bucket_numbers)}"
    s3_server.create_bucket(name)
    return name
