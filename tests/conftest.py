"""Shared pytest setup. Fixtures live next to the code they serve in tests/support/."""
