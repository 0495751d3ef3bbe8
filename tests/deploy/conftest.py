"""The ``slow`` marker: the longest exports, still run by default (``-m "not slow"`` skips them)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: among the slowest tests (seconds each); run by default"
    )
