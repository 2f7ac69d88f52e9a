"""stagewise's pytest plugin: ready test environments as fixtures.

pytest loads it by itself once stagewise is installed (the `stagewise` entry point in the
`pytest11` group); with `PYTEST_DISABLE_PLUGIN_AUTOLOAD` set, load it with `-p stagewise`,
and turn it off with `-p no:stagewise`. The fixtures are async, for async tests: they need
pytest-asyncio (in auto mode, or with the tests marked `@pytest.mark.asyncio`).

    async def test_checkout(stagewise_env) -> None:
        env = stagewise_env(checkout)            # in memory, on a FakeClock
        run = await env.run("checkout", {"order_id": "o-1", "amount": 10})

    async def test_checkout_on_sqlite(stagewise_sqlite_env) -> None:
        env = await stagewise_sqlite_env(checkout)   # a SQLite file, on a FakeClock

`stagewise_env(*workflows, **options)` builds a `TestEnvironment` (`options` are its own:
`settings`, `plugins`, `event_sink`, `clock`, `external_transport`); the SQLite one puts its
persistence, job transport and blob store in a fresh file of the test's `tmp_path`, and needs
stagewise-sql (the test is skipped without it). Each environment is closed after the test.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from stagewise._workflow import Workflow, WorkflowRegistry
from stagewise.testing._clock import FakeClock
from stagewise.testing._driver import TestEnvironment

__all__ = ["stagewise_env", "stagewise_sqlite_env"]

Workflows = Workflow | Sequence[Workflow] | WorkflowRegistry
MemoryFactory = Callable[..., TestEnvironment]
SqliteFactory = Callable[..., Awaitable[TestEnvironment]]


def _registry(given: tuple[Workflows, ...]) -> WorkflowRegistry:
    if len(given) == 1 and isinstance(given[0], WorkflowRegistry):
        return given[0]
    workflows: list[Workflow] = []
    for item in given:
        if isinstance(item, WorkflowRegistry):
            workflows.extend(item)
        elif isinstance(item, Workflow):
            workflows.append(item)
        else:
            workflows.extend(item)
    return WorkflowRegistry(workflows)


def _sql_backend() -> Any:
    """`stagewise_sql.SqlBackend`, or a skip. Imported by name: the kernel package does not
    depend on its adapters (an import-linter contract checks it), and this plugin only
    uses one when it is installed."""
    try:
        return importlib.import_module("stagewise_sql").SqlBackend
    except ImportError:
        pytest.skip("stagewise_sqlite_env needs stagewise-sql (pip install stagewise-sql)")


try:
    import pytest_asyncio

    HAVE_PYTEST_ASYNCIO = True
except ImportError:  # then the fixtures say what they need when a test asks for them
    HAVE_PYTEST_ASYNCIO = False


def _needs_pytest_asyncio() -> None:
    pytest.fail(
        "stagewise's fixtures are async and need pytest-asyncio: pip install pytest-asyncio, "
        'and set asyncio_mode = "auto" (or mark the tests @pytest.mark.asyncio)',
        pytrace=False,
    )


if HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture
    async def stagewise_env() -> AsyncIterator[MemoryFactory]:
        """Make `TestEnvironment`s in memory, on a FakeClock: `stagewise_env(*workflows)`."""
        made: list[TestEnvironment] = []

        def make(*workflows: Workflows, **options: Any) -> TestEnvironment:
            env = TestEnvironment(_registry(workflows), **options)
            made.append(env)
            return env

        try:
            yield make
        finally:
            for env in made:
                await env.kernel.aclose()

    @pytest_asyncio.fixture
    async def stagewise_sqlite_env(tmp_path: Path) -> AsyncIterator[SqliteFactory]:
        """Make `TestEnvironment`s on a SQLite file each, on a FakeClock:
        `await stagewise_sqlite_env(*workflows)`."""
        opened: list[tuple[TestEnvironment, Any]] = []

        async def make(*workflows: Workflows, **options: Any) -> TestEnvironment:
            sql_backend = _sql_backend()
            clock = options.pop("clock", None) or FakeClock()
            path = tmp_path / f"stagewise-{len(opened) + 1}.db"
            backend = await sql_backend.connect(f"sqlite+aiosqlite:///{path}", clock=clock)
            env = TestEnvironment(
                _registry(workflows),
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
    def stagewise_env() -> None:
        """Needs pytest-asyncio."""
        _needs_pytest_asyncio()

    @pytest.fixture
    def stagewise_sqlite_env() -> None:
        """Needs pytest-asyncio."""
        _needs_pytest_asyncio()
