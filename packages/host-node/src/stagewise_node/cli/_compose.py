"""The command line's wiring: load the user's workflows, open or upgrade the database, and
build a kernel (`SqlBackend.kernel`) or a worker (`stagewise_node.node_host`) on it. The
one module of the command line that knows stagewise_sql."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagewise import Event, Kernel, KernelSettings, Workflow, WorkflowRegistry
from stagewise_node._compose import node_host
from stagewise_node._host import NodeHost
from stagewise_node._settings import NodeHostSettings
from stagewise_node.cli._output import CliError, events_logger
from stagewise_sql import SqlBackend, upgrade
from stagewise_sql._errors import DatabaseNotFoundError

__all__ = ["LoggingEventSink", "build_host", "client", "connect", "load_workflows", "upgrade"]

DEFAULT_DATABASE = "sqlite+aiosqlite:///stagewise.db"
"""The embedded default: a SQLite file in the current directory."""
DATABASE_ENV = "STAGEWISE_DATABASE_URL"
APP_ENV = "STAGEWISE_APP"


def load_workflows(spec: str | None) -> WorkflowRegistry:
    """The workflows named by `MODULE:ATTR` (a registry, a workflow or a list of them);
    an empty registry when `spec` is None.

    Raises:
        CliError: the module cannot be imported or the attribute is not workflows.
    """
    if not spec:
        return WorkflowRegistry()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:ATTR (like myapp.flows:registry), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` would: the user's modules are found
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from exc
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(value, WorkflowRegistry):
        return value
    if isinstance(value, Workflow):
        return WorkflowRegistry([value])
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | dict):
        items = list(value)
        if items and all(isinstance(w, Workflow) for w in items):
            return WorkflowRegistry(items)
    raise CliError(
        f"{spec} is a {type(value).__name__}; expected a WorkflowRegistry, a Workflow or a "
        "list of workflows"
    )


async def connect(url: str, *, migrate: bool = True) -> SqlBackend:
    """Open the database; every failure is a `StagewiseError` with a one-line message.

    Commands that write new work (`run`, `worker`, `db upgrade`) create or upgrade the
    schema; the ones that act on what is there (`runs ...`) pass `migrate=False`, and
    create nothing: a mistyped `--db` is `no stagewise database at URL`, not an empty one.
    """
    try:
        return await SqlBackend.connect(url, migrate=migrate)
    except DatabaseNotFoundError as exc:  # the library's hint to create it would mislead
        raise CliError(f"no stagewise database at {exc.url}") from exc


class LoggingEventSink:
    """The CLI's event sink: every event becomes a DEBUG line on `stagewise.events`."""

    async def publish(self, event: Event) -> None:
        events_logger.debug(
            "%s %s",
            event.type,
            getattr(event, "stage_id", "") or "",
            extra={"run_id": event.run_id, "event": event.type, "seq": event.seq},
        )


@dataclass
class Client:
    backend: SqlBackend
    kernel: Kernel
    registry: WorkflowRegistry


@asynccontextmanager
async def client(db: str, app: str | None, *, migrate: bool = True) -> AsyncIterator[Client]:
    """A kernel on the database for one command, closed on the way out (`migrate`: as for
    `connect`)."""
    registry = load_workflows(app)
    backend = await connect(db, migrate=migrate)
    kernel = backend.kernel(registry, event_sink=LoggingEventSink())
    try:
        yield Client(backend, kernel, registry)
    finally:
        await kernel.aclose()
        await backend.close()


def build_host(
    backend: SqlBackend,
    registry: WorkflowRegistry,
    *,
    worker_id: str | None,
    settings: NodeHostSettings,
    kernel_settings: KernelSettings,
) -> NodeHost:
    """The CLI's worker: `node_host` with events logged."""
    return node_host(
        backend,
        registry,
        worker_id=worker_id,
        settings=settings,
        kernel_settings=kernel_settings,
        event_sink=LoggingEventSink(),
    )


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"
