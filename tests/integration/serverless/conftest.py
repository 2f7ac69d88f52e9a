"""Fixtures for the serverless host's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ._support import Deployment

MakeDeployment = Callable[..., Deployment]


@pytest.fixture
async def deploy() -> AsyncIterator[MakeDeployment]:
    """Build deployments on the in-memory adapters; their kernels are closed afterwards."""
    made: list[Deployment] = []

    def make(*args: Any, **kwargs: Any) -> Deployment:
        d = Deployment(*args, **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        await d.aclose()
