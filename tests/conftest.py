"""Shared pytest setup. Fixtures live next to the code they serve in tests/support/; they are
imported here, at the top of tests/, so every test folder below sees them (and these hooks).

Skips are failures in CI: a test that skips there (nginx missing, a tmpfs that cannot be
mounted, a package not installed) proves nothing while the run stays green. With
``ISIC2020_FORBID_SKIPS=1`` (set by ``.ci/run``) or ``CI=true`` (set by CI services), every
skip, whatever raised it (a ``skipif`` mark, ``pytest.skip`` in a fixture or a test,
``importorskip``, a module-level skip at collection), is reported as a failure carrying its
reason, so pytest's own exit status says so. This is done on the reports rather than by
reading pytest's summary line, which changes with ``-q``/``-v`` and plugins.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest
from support.fixtures import (  # noqa: F401 - pytest finds fixtures by name
    fault_server,
    nginx_server_factory,
    s3_bucket,
    s3_server,
    served_dir,
)


def skips_forbidden() -> bool:
    """True in CI: ``ISIC2020_FORBID_SKIPS=1`` or ``CI=true``/``CI=1``."""
    return (
        os.environ.get("ISIC2020_FORBID_SKIPS") == "1"
        or os.environ.get("CI", "").lower() in ("true", "1")
    )


def _fail_if_skipped(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not skips_forbidden():
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI, which counts as a failure: {reason} "
        "(install what is missing; .ci/run runs as root and installs nginx)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_if_skipped(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_if_skipped(report)
    return report
