"""`stagewise worker`: a node host serving the user's workflows until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import replace

from stagewise import KernelSettings
from stagewise_node._settings import NodeHostSettings
from stagewise_node.cli._compose import build_host, connect, load_workflows
from stagewise_node.cli._output import CliError

logger = logging.getLogger("stagewise.node")


async def serve(
    *,
    app: str,
    db: str,
    concurrency: int,
    worker_id: str | None,
    lease: float,
    heartbeat: float | None,
    poll_interval: float,
    drain_timeout: float,
) -> None:
    registry = load_workflows(app)
    if not len(registry):
        raise CliError(f"{app} holds no workflows")
    try:
        settings = NodeHostSettings(
            concurrency=concurrency,
            job_poll_interval=poll_interval,
            claim_interval=poll_interval,
            flush_interval=poll_interval,
            suspended_poll_interval=max(poll_interval, 1.0),
            reap_interval=max(poll_interval, lease / 2),
            heartbeat_interval=heartbeat,
            drain_timeout=drain_timeout,
        )
        kernel_settings = KernelSettings(lease_seconds=lease, sync_workers=concurrency)
        # The worker says it is alive at least as often as it renews its leases, so that a
        # dead one's attempts are taken over within a few heartbeats, not after its leases.
        beat = min(settings.beat_interval, settings.heartbeat_every(lease))
        settings = replace(settings, beat_interval=beat)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    backend = await connect(db)
    try:
        host = build_host(
            backend,
            registry,
            worker_id=worker_id,
            settings=settings,
            kernel_settings=kernel_settings,
        )
        logger.info(
            "serving %d workflow(s) from %s on %s: %s",
            len(registry),
            app,
            backend.url,
            ", ".join(sorted(w.id for w in registry)),
            extra={"worker_id": host.worker_id},
        )
        try:
            await host.run()
        finally:
            await host.kernel.aclose()
    finally:
        await backend.close()


def exit_if_stage_threads_remain() -> None:
    """After a drain that had to abandon sync stages, their threads may still run: they
    cannot be interrupted, their leases were released, and their results will be refused.
    Exit now instead of waiting for them at interpreter shutdown."""
    stuck = [
        t for t in threading.enumerate() if t.name.startswith("stagewise-stage") and t.is_alive()
    ]
    if stuck:
        logger.warning("exiting with %d abandoned sync stage thread(s) still running", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
