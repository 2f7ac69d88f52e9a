"""Real worker processes for the node tests: spawn `python -m stagewise_node.cli worker`,
wait until they serve, signal them, and read what they did."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagewise import (
    Kernel,
    RunCreate,
    RunFilter,
    RunStatus,
    StageStatus,
    WorkflowRegistry,
    create_kernel,
)
from stagewise.testing import NoopEventSink, NoopScheduler
from stagewise_sql import SqlBackend
from tests.integration.node.flows import SIDE_DB_ENV, create_side_db, side_db, workflows

ROOT = Path(__file__).resolve().parents[3]
APP = "tests.integration.node.flows:workflows"


@dataclass
class Worker:
    worker_id: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def exit_code(self, within: float) -> int:
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.worker_id} still running after {within}s")
            await asyncio.sleep(0.05)
        return self.process.returncode


@dataclass
class Workers:
    """Worker processes on one database, all killed at the end of the test."""

    url: str
    tmp: Path
    side: Path
    started: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        create_side_db(self.side)  # before any worker opens it

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[SIDE_DB_ENV] = str(self.side)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.pop("COLUMNS", None)
        return env

    def spawn(
        self,
        worker_id: str,
        *,
        concurrency: int = 8,
        lease: float = 2.0,
        heartbeat: float = 0.5,
        poll: float = 0.5,
        drain: float = 10.0,
        app: str = APP,
        env: dict[str, str] | None = None,
    ) -> Worker:
        log = self.tmp / f"{worker_id}.log"
        args = [
            sys.executable,
            "-m",
            "stagewise_node.cli",
            "worker",
            app,
            f"--db={self.url}",
            f"--worker-id={worker_id}",
            f"--concurrency={concurrency}",
            f"--lease={lease}",
            f"--heartbeat={heartbeat}",
            f"--poll-interval={poll}",
            f"--drain-timeout={drain}",
            "--log-level=info",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**self.env(), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(worker_id, process, log)
        self.started.append(worker)
        return worker

    async def ready(self, *workers: Worker, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        for worker in workers:
            while f"worker {worker.worker_id} started" not in worker.text():
                code = worker.process.poll()
                if code is not None:
                    raise AssertionError(f"worker exited with {code}:\n{worker.text()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker not ready in {within}s:\n{worker.text()}")
                await asyncio.sleep(0.05)

    def kill_all(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.kill()
            worker.process.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {w.worker_id} ---\n{w.text()[-4000:]}" for w in self.started)

    # --- the side table ----------------------------------------------------------------

    def executions(self) -> list[dict[str, Any]]:
        conn = side_db(str(self.side))
        try:
            rows = conn.execute(
                "SELECT run_id, stage_id, attempt, pid, started, finished FROM executions"
            ).fetchall()
        finally:
            conn.close()
        keys = ("run_id", "stage_id", "attempt", "pid", "started", "finished")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def counts(self) -> Counter[tuple[str, str]]:
        return Counter((e["run_id"], e["stage_id"]) for e in self.executions())


class Client:
    """A kernel in the test process, as `stagewise run` would build it."""

    def __init__(self, backend: SqlBackend, kernel: Kernel) -> None:
        self.backend = backend
        self.kernel = kernel

    @classmethod
    async def open(cls, url: str) -> Client:
        backend = await SqlBackend.connect(url)
        kernel = create_kernel(
            persistence=backend.persistence,
            blob_store=backend.blob_store,
            job_transport=backend.job_transport,
            event_sink=NoopEventSink(),
            scheduler=NoopScheduler(),
            clock=backend.clock,
            registry=WorkflowRegistry(workflows),
        )
        return cls(backend, kernel)

    async def close(self) -> None:
        await self.kernel.aclose()
        await self.backend.close()

    async def create(self, workflow_id: str, input: Any) -> str:
        result = await self.kernel.dispatch(RunCreate(workflow_id=workflow_id, input=input))
        return result.run_id

    async def statuses(self) -> Counter[RunStatus]:
        async with self.backend.persistence.transaction() as tx:
            counts: Counter[RunStatus] = Counter()
            for status in RunStatus:
                counts[status] = len(await tx.runs.find(RunFilter(status=status), limit=10_000))
        return counts

    async def run(self, run_id: str) -> Any:
        async with self.backend.persistence.transaction() as tx:
            run = await tx.runs.get(run_id)
            stages = {s.stage_id: s for s in await tx.stages.for_run(run_id)}
        assert run is not None
        return run, stages

    async def wait_finished(self, run_ids: list[str], *, within: float, why: Workers) -> None:
        async def finished(tx: Any, run_id: str) -> bool:
            run = await tx.runs.get(run_id)
            return run is not None and run.status.is_terminal

        await self._wait(run_ids, finished, "finished", within=within, why=why)

    async def wait_stages(
        self, run_ids: list[str], stage_id: str, status: StageStatus, *, within: float, why: Workers
    ) -> None:
        """Until stage `stage_id` of every run is `status`."""

        async def there(tx: Any, run_id: str) -> bool:
            stages = {s.stage_id: s for s in await tx.stages.for_run(run_id)}
            return stage_id in stages and stages[stage_id].status is status

        await self._wait(run_ids, there, f"with {stage_id} {status.value}", within=within, why=why)

    async def _wait(
        self,
        run_ids: list[str],
        done: Callable[[Any, str], Awaitable[bool]],
        what: str,
        *,
        within: float,
        why: Workers,
    ) -> None:
        deadline = time.monotonic() + within
        pending = set(run_ids)
        while pending:
            async with self.backend.persistence.transaction() as tx:
                for run_id in list(pending):
                    if await done(tx, run_id):
                        pending.discard(run_id)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(pending)} run(s) not {what} after {within}s\n{why.logs()}"
                )
            await asyncio.sleep(0.1)
