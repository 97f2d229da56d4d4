"""isic2020: the ISIC 2020 Challenge Dataset onto a machine, complete and verified."""

__version__ = "0.1.0"
