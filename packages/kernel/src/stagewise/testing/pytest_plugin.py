"""stagewise's pytest plugin: ready test environments as fixtures.

pytest loads it by itself once stagewise is installed (the `stagewise` entry point in the
`pytest11` group); with `PYTEST_DISABLE_PLUGIN_AUTOLOAD` set, load it with `-p stagewise`,
and turn it off with `-p no:stagewise`. The fixtures are async, for async tests: they need
pytest-asyncio (in auto mode, or with the tests marked `@pytest.mark.asyncio`).

    async def test_checkout(stagewise_env) -> None:
        env = stagewise_env(checkout)            # in memory, on a FakeClock
        run = await env.run("checkout", {"order_id": "o-1", "amount": 10})

`stagewise_env(*workflows, **options)` builds a `TestEnvironment` (`options` are its own:
`settings`, `plugins`, `event_sink`, `clock`, `external_transport`). Each environment is
closed after the test. stagewise-sql adds `stagewise_sqlite_env` (its own plugin,
`stagewise_sql.pytest_plugin`): the same on a SQLite file, `await stagewise_sqlite_env(...)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from stagewise._workflow import Workflow, WorkflowRegistry
from stagewise.testing._driver import TestEnvironment

__all__ = [
    "HAVE_PYTEST_ASYNCIO",
    "Workflows",
    "needs_pytest_asyncio",
    "registry_of",
    "stagewise_env",
]

Workflows = Workflow | Sequence[Workflow] | WorkflowRegistry
MemoryFactory = Callable[..., TestEnvironment]


def registry_of(given: tuple[Workflows, ...]) -> WorkflowRegistry:
    """What a fixture was given (workflows, lists of them, registries), as one registry."""
    if len(given) == 1 and isinstance(given[0], WorkflowRegistry):
        return given[0]
    workflows: list[Workflow] = []
    for item in given:
        if isinstance(item, Workflow):
            workflows.append(item)
        else:
            workflows.extend(item)
    return WorkflowRegistry(workflows)


try:
    import pytest_asyncio

    HAVE_PYTEST_ASYNCIO = True
except ImportError:  # then the fixtures say what they need when a test asks for them
    HAVE_PYTEST_ASYNCIO = False


def needs_pytest_asyncio() -> None:
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
            env = TestEnvironment(registry_of(workflows), **options)
            made.append(env)
            return env

        try:
            yield make
        finally:
            for env in made:
                await env.kernel.aclose()

else:

    @pytest.fixture
    def stagewise_env() -> None:
        """Needs pytest-asyncio."""
        needs_pytest_asyncio()
