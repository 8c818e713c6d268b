"""Fixtures for the API unit tests: the real app on the FakeEngine, driven in-process with anyio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from api_harness import Served, serve


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def serve_app() -> Callable[..., Any]:
    """`async with serve_app(engine, **settings) as served:` for tests that need their own config."""
    return serve


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """The app with default settings on a FakeEngine without token delay, ready to serve."""
    async with serve() as app:
        yield app
