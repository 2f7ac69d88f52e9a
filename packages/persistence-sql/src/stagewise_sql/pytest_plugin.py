"""stagewise-sql's pytest plugin: `stagewise_sqlite_env`, a test environment on SQLite.

Loaded by pytest once stagewise-sql is installed (the `stagewise-sql` entry point in the
`pytest11` group), beside stagewise's own `stagewise_env`:

    async def test_checkout_on_sqlite(stagewise_sqlite_env) -> None:
        env = await stagewise_sqlite_env(checkout)   # a SQLite file of its own, a FakeClock
        run = await env.run("checkout", {"order_id": "o-1", "amount": 10})

Each call gives a `TestEnvironment` whose persistence, job transport and blob store live in
a fresh file of the test's `tmp_path` (options as for `stagewise_env`); each is closed after
the test. Like the other fixtures it needs pytest-asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from stagewise.testing import FakeClock, TestEnvironment
from stagewise.testing.pytest_plugin import (
    HAVE_PYTEST_ASYNCIO,
    Workflows,
    needs_pytest_asyncio,
    registry_of,
)
from stagewise_sql._backend import SqlBackend

SqliteFactory = Callable[..., Awaitable[TestEnvironment]]

if HAVE_PYTEST_ASYNCIO:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def stagewise_sqlite_env(tmp_path: Path) -> AsyncIterator[SqliteFactory]:
        """Make `TestEnvironment`s on a SQLite file each, on a FakeClock:
        `await stagewise_sqlite_env(*workflows)`."""
        opened: list[tuple[TestEnvironment, SqlBackend]] = []

        async def make(*workflows: Workflows, **options: Any) -> TestEnvironment:
            clock = options.pop("clock", None) or FakeClock()
            path = tmp_path / f"stagewise-{len(opened) + 1}.db"
            backend = await SqlBackend.connect(f"sqlite+aiosqlite:///{path}", clock=clock)
            env = TestEnvironment(
                registry_of(workflows),
                clock=clock,
                persistence=backend.persistence,
                job_transport=backend.job_transport,
                blob_store=backend.blob_store,
                **options,
            )
            opened.append((env, backend))
            return env

        try:
            yield make
        finally:
            for env, backend in opened:
                await env.kernel.aclose()
                await backend.close()

else:

    @pytest.fixture
    def stagewise_sqlite_env() -> None:
        """Needs pytest-asyncio."""
        needs_pytest_asyncio()
