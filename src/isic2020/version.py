"""The package version, in one place (hatchling reads it for the wheel; ``--version`` prints it)."""

__version__ = "0.1.0"
