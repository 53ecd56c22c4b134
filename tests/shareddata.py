"""The real archives beside the checkout (``../shared/data``), shared by the tests that read them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require(path: Path = DATA) -> Path:
    """``path`` if it exists. Missing: the test is skipped on a newcomer's machine, but fails where
    ``ADAINF_REQUIRE_SHARED_DATA`` is set (``.ci/run`` sets it: CI has ../shared, so a skip there would hide
    the real-data tests)."""
    if not path.exists():
        message = f"shared data not found at {path}"
        if os.environ.get("ADAINF_REQUIRE_SHARED_DATA"):
            pytest.fail(f"{message} (ADAINF_REQUIRE_SHARED_DATA is set)")
        pytest.skip(message)
    return path
