"""The test servers (split into one module a server in the next commit): every public name of
``fault_server`` (the old ``servers.py``), as before."""

from . import fault_server as _module

globals().update({k: v for k, v in vars(_module).items() if not k.startswith("_")})
