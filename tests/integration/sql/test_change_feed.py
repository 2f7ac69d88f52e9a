"""The change feed's LISTEN connection (PostgreSQL): one that cannot be opened is logged
and given up for now (readers keep their polls), and one that opens hears its channel."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from stagewise_sql import SqlBackend, _feed

pytestmark = pytest.mark.postgres


async def test_a_listener_that_cannot_connect_is_logged_and_none(
    pg_module_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = _feed.listener_options
    async with await SqlBackend.connect(pg_module_url) as backend:
        monkeypatch.setattr(_feed, "listener_options", lambda db: {**real(db), "port": 1})
        with caplog.at_level(logging.WARNING, logger="stagewise_sql"):
            conn = await _feed.open_listener(backend._db, {"ch": lambda *_: None}, print)
        assert conn is None
        assert "cannot LISTEN on ch" in caplog.text
        # The feed itself carries on: a watch without a listener, readers on their polls.
        unwatch = await backend.changes.watch("some-run", lambda: None)
        unwatch()


async def test_a_listener_hears_its_channel(pg_module_url: str) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()

    def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        heard.put_nowait(payload)

    async with await SqlBackend.connect(pg_module_url) as backend:
        conn = await _feed.open_listener(backend._db, {"stagewise_test": notified}, print)
        assert conn is not None
        try:
            async with backend.engine.connect() as sql:
                await sql.exec_driver_sql("SELECT pg_notify('stagewise_test', 'hello')")
                await sql.commit()
            assert await asyncio.wait_for(heard.get(), 10) == "hello"
        finally:
            await conn.close()
