"""models/training/settings.py: unknown keys and wrong types refused; a retired setting refused in one line."""

from __future__ import annotations

import pytest

from models.training.settings import Settings
from shards.base.errors import ConfigError


def test_settings_reject_unknown_keys_and_wrong_types():
    settings = Settings(shards=("a:1",), steps=3)
    assert Settings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.from_dict({**settings.to_dict(), "stepz": 3})
    with pytest.raises(ConfigError, match="steps='3'"):
        Settings.from_dict({**settings.to_dict(), "steps": "3"})
    with pytest.raises(ConfigError, match="method='swav'"):
        Settings(method="swav")


def test_a_config_of_the_retired_fused_jitter_is_refused_in_one_line():
    """--jitter-impl is gone (the exact colour stage is fast); an old config.yaml with jitter_impl: exact still
    reads, one with fused is refused naming the key."""
    assert Settings.from_dict({"jitter_impl": "exact"}) == Settings()
    with pytest.raises(ValueError, match="jitter_impl: fused is gone"):
        Settings.from_dict({"jitter_impl": "fused"})
