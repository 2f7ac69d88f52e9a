"""`stagewise runs events RUN_ID` (the values a run published) and `stagewise runs stream
RUN_ID KEY` (one of its streams, followed as it is written).

A value is shown as compact JSON; a stream item as its text when it is a string, else as
JSON, after its offset, stage and attempt (an attempt that was retried wrote the items
marked with it). Everything is escaped like all the CLI prints (`_text`). `runs stream`
follows until the stream is closed or the run has ended (`Kernel.read_stream`); `--raw`
prints string items one after another with nothing added, as a token stream reads.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from stagewise import RunValueRecord, StreamItemRecord
from stagewise_node.cli._compose import client
from stagewise_node.cli._output import console
from stagewise_node.cli._render import Times, compact_json, events_table
from stagewise_node.cli._text import json_text, safe_text


async def show_events(*, db: str, run_id: str, as_json: bool, times: Times) -> None:
    """Print the run's published values: key, value, who set it and when."""
    async with client(db, None, migrate=False) as c:
        values = await c.kernel.list_events(run_id)
    if as_json:
        console.print(Text(json_text([_value_json(v) for v in values])), soft_wrap=True)
        return
    if not values:
        console.print(safe_text(f"run {run_id} has published no events", "dim"))
        return
    console.print(events_table(values, times))


async def show_stream(
    *, db: str, run_id: str, key: str, offset: int, as_json: bool, raw: bool, times: Times
) -> None:
    """Print the stream's items from `offset` on, as they come, until it ends."""
    async with client(db, None, migrate=False) as c:
        async for item in c.kernel.read_stream(run_id, key, offset=offset):
            if raw:
                text = item.value if isinstance(item.value, str) else compact_json(item.value)
                console.print(safe_text(text, newlines=True), end="", soft_wrap=True)
            elif as_json:
                console.print(Text(json_text(_item_json(item), indent=None)), soft_wrap=True)
            else:
                console.print(_item_line(item, times), soft_wrap=True)
    if raw:
        console.print()


def _item_line(item: StreamItemRecord, times: Times) -> Text:
    """`offset  time  stage#attempt  value`, escaped."""
    value = item.value if isinstance(item.value, str) else compact_json(item.value)
    return Text.assemble(
        (f"{item.offset:>5}", "dim"),
        "  ",
        (times.full(item.written_at), "dim"),
        "  ",
        safe_text(f"{item.stage_id}#{item.attempt}", "cyan"),
        "  ",
        safe_text(value),
    )


def _value_json(v: RunValueRecord) -> dict[str, Any]:
    return {
        "key": v.key,
        "value": v.value,
        "stage_id": v.stage_id,
        "attempt": v.attempt,
        "set_at": v.set_at.isoformat(),
    }


def _item_json(item: StreamItemRecord) -> dict[str, Any]:
    return {
        "offset": item.offset,
        "value": item.value,
        "stage_id": item.stage_id,
        "attempt": item.attempt,
        "written_at": item.written_at.isoformat(),
    }
