"""Serving until the process is told to stop: SIGTERM or SIGINT drains, a second one ends
the drain at once (`NodeHost.run`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

logger = logging.getLogger("stagewise.node")


async def serve_until_signalled(
    *,
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    force_stop: Callable[[], None],
    crashed: asyncio.Event,
    drain_timeout: float,
    worker_id: str,
) -> None:
    """`start`, then wait for a signal (or for `crashed`), then `stop`. Signal handlers
    are installed only where the loop can have them (the main thread, not Windows) and are
    removed on the way out, however it ends."""
    loop = asyncio.get_running_loop()
    requested = asyncio.Event()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum).name
        if received == 1:
            logger.info(
                "%s received: draining (up to %.1fs)",
                name,
                drain_timeout,
                extra={"worker_id": worker_id},
            )
            requested.set()
        else:
            logger.warning(
                "%s received again: stopping without waiting for in-flight stages",
                name,
                extra={"worker_id": worker_id},
            )
            force_stop()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            continue
        installed.append(sig)
    try:
        await start()
        stop_waiter = asyncio.ensure_future(requested.wait())
        crash_waiter = asyncio.ensure_future(crashed.wait())
        try:
            await asyncio.wait({stop_waiter, crash_waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_waiter.cancel()
            crash_waiter.cancel()
            await asyncio.gather(stop_waiter, crash_waiter, return_exceptions=True)
    finally:
        await stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
