"""Shared pytest setup. Fixtures live next to the code they serve in tests/support/."""

from support.fixtures import (  # noqa: F401 - pytest finds fixtures by name
    fault_server,
    nginx_server_factory,
    s3_bucket,
    s3_server,
    served_dir,
)
