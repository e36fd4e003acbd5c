"""AIDIST_RETENTION_S: 0 keeps finished jobs for ever; otherwise it is at least a minute."""

from __future__ import annotations

import pytest

from aidist.config import MIN_RETENTION_S, Settings
from aidist.errors import ConfigError


def test_retention_is_off_or_at_least_a_minute() -> None:
    assert Settings(retention_s=0).retention_s == 0
    assert Settings(retention_s=MIN_RETENTION_S).retention_s == MIN_RETENTION_S
    with pytest.raises(ConfigError, match="AIDIST_RETENTION_S"):
        Settings(retention_s=5)
