"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from tests.unit.doubles import Harness


@pytest.fixture
def harness() -> Harness:
    """The executor over in-memory doubles of the store and cache."""
    return Harness()
