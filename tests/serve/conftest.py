"""Fixtures of the proxy unit tests (helpers live in serve_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
