"""The production clock and id generator (the kernel itself only sees the ports)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime


class SystemClock:
    """Wall-clock time in UTC and `asyncio.sleep`."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class UuidIds:
    """Time-ordered, globally unique ids (UUIDv7 layout: 48-bit ms timestamp + random).

    Time-ordered ids keep B-tree inserts append-mostly on the database side.
    """

    def new_id(self) -> str:
        ms = time.time_ns() // 1_000_000
        rand = int.from_bytes(os.urandom(10), "big")
        value = (ms & ((1 << 48) - 1)) << 80 | (0x7 << 76) | (rand & ((1 << 76) - 1))
        value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
        return str(uuid.UUID(int=value))
