"""Plugins: code that reacts to events, delivered through the outbox.

Each plugin is its own consumer of the outbox (`plugin:<id>`), with its own delivery state:
a failing plugin is retried with backoff and dead-lettered after N attempts without holding
back the event sink or the other plugins, and `plugin.replayDLQ` puts its dead letters back.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from stagewise._errors import PluginDeliveryError, WorkflowDefinitionError
from stagewise._events import EVENT_TYPES, Event
from stagewise._stages import _check_id

SINK_CONSUMER = "sink"


@dataclass(frozen=True, slots=True, eq=False)
class Plugin:
    id: str
    on: frozenset[str]
    handle: Callable[[Event], Any] | Callable[[Event], Awaitable[Any]]

    @property
    def consumer(self) -> str:
        return f"plugin:{self.id}"

    def wants(self, event_type: str) -> bool:
        return not self.on or event_type in self.on

    async def deliver(self, event: Event) -> None:
        result = self.handle(event)
        if inspect.isawaitable(result):
            await result


def define_plugin(
    *,
    id: str,
    on: Iterable[str] = (),
    handle: Callable[[Event], Any] | Callable[[Event], Awaitable[Any]],
) -> Plugin:
    """Define a plugin that gets the events whose type is in `on` (all events if empty).

    `handle(event)` may be sync or async; raising means "not delivered".

    Raises:
        WorkflowDefinitionError: a bad id, an unknown event type, a non-callable handle.
    """
    _check_id(id)
    types = frozenset(on)
    unknown = sorted(types - EVENT_TYPES)
    if unknown:
        raise WorkflowDefinitionError(
            f"plugin {id!r}: unknown event types {unknown}; known: {sorted(EVENT_TYPES)}"
        )
    if not callable(handle):
        raise WorkflowDefinitionError(f"plugin {id!r}: handle must be callable")
    return Plugin(id=id, on=types, handle=handle)


class PluginRunner:
    """Delivers events to plugins. It is an `EventSink` too: `publish` gives an event to
    every plugin that wants it and raises if any refused it."""

    def __init__(self, plugins: Sequence[Plugin] = ()) -> None:
        self._plugins: dict[str, Plugin] = {}
        for plugin in plugins:
            if plugin.id in self._plugins:
                raise WorkflowDefinitionError(f"plugin id {plugin.id!r} is used twice")
            self._plugins[plugin.id] = plugin

    @property
    def plugins(self) -> list[Plugin]:
        return list(self._plugins.values())

    def consumers_for(self, event_type: str) -> list[str]:
        return [p.consumer for p in self._plugins.values() if p.wants(event_type)]

    def by_consumer(self, consumer: str) -> Plugin | None:
        if not consumer.startswith("plugin:"):
            return None
        return self._plugins.get(consumer.removeprefix("plugin:"))

    async def publish(self, event: Event) -> None:
        failures = []
        for plugin in self._plugins.values():
            if plugin.wants(event.type):
                try:
                    await plugin.deliver(event)
                except Exception as exc:
                    failures.append(f"{plugin.id}: {exc}")
        if failures:
            raise PluginDeliveryError("; ".join(failures))
