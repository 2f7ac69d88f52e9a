"""Benchmarks: throughput, latency, fan-out and crash recovery on SQLite and PostgreSQL.

    uv run python bench/run.py [--db sqlite|postgres|both] [--workloads W1,W2,W3,W4]
                               [--quick] [--repeat N] [--poll-interval S]

Every workload runs through the real job path: this process is the client (it creates runs
with `run.create`, one transaction each, as an application would) and the stages run in
`stagewise worker` processes (`bench/worker.py`: the CLI's worker plus counters), which
claim the runs, dequeue jobs, take leases and write the outbox exactly as in production.
Each benchmark gets a fresh database (a temporary SQLite file; on PostgreSQL a database
created for it and dropped afterwards).

Workloads (counts in --quick mode in brackets):
  W1  2,000 [100] runs of a 3-stage workflow (each stage returns input + 1), created all at
      once; wall seconds from the first create to the last completion, runs/s, stages/s.
      Variants: one worker with the default 10 slots, one with 16, two workers with 16.
  W2  200 [20] runs of the same workflow one after another, each awaited before the next;
      p50/p95/p99 of `run.create` -> COMPLETED (the kernel's created_at / finished_at).
  W3  one run with a 200-way [50-way] parallel group and a stage that sums it; wall seconds.
  W4  200 [40] runs whose second stage sleeps 0.2 s; the worker is SIGKILLed when half of
      those sleeping stages have run, and a fresh one is started with the same worker id
      (reclaims that id's leases at once) or a new one (takes over when the leases expire).
      Runs completed, stage bodies executed more than once, seconds from the restart until
      all complete.

Each worker counts its commits and statements (SQLAlchemy engine events); W1 reports them
per stage executed (dequeues, claims, outbox flushes and heartbeats included).

Output: one JSON line per result on stdout, and a markdown table (medians over --repeat) in
bench/results/latest.md. PostgreSQL comes from $STAGEWISE_BENCH_DATABASE_URL (default
postgresql+asyncpg://postgres@127.0.0.1:5432/postgres). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from _pg import pg_admin
from sqlalchemy import func, select

from stagewise import RunCreate, WorkflowRegistry

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
sys.path.insert(0, str(HERE))

from workloads import EXEC_LOG_ENV, workflows  # noqa: E402

# --- sizes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    w1_runs: int
    w2_runs: int
    w3_fanout: int
    w4_runs: int
    w4_lease: float


FULL = Sizes(w1_runs=2000, w2_runs=200, w3_fanout=200, w4_runs=200, w4_lease=5.0)
QUICK = Sizes(w1_runs=100, w2_runs=20, w3_fanout=50, w4_runs=40, w4_lease=2.0)


# --- databases ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_database(kind: str) -> AsyncIterator[str]:
    """A URL of an empty database of `kind`, removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="stagewise-bench-") as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        return
    from sqlalchemy import make_url

    server = os.environ.get("STAGEWISE_BENCH_DATABASE_URL", PG_DEFAULT)
    name = f"stagewise_bench_{uuid.uuid4().hex[:10]}"
    await pg_admin(server, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(server).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        await pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- worker processes --------------------------------------------------------------------


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    worker_id: str
    counts_file: Path
    log_file: Path
    started_at: float  # time.time() when it was launched
    ready_file: Path

    def ready_at(self) -> float | None:
        """time.time() when its host had started (reclaimed its leases, loops running)."""
        try:
            return self.ready_file.stat().st_mtime
        except OSError:
            return None

    def counts(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.counts_file.read_text())
        except (OSError, ValueError):
            return {}
        return data


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT)


@dataclass
class Bench:
    """One benchmark: a database, its client kernel and the worker processes."""

    url: str
    db: str
    tmp: Path
    poll_interval: float
    backend: Any = None
    kernel: Any = None
    workers: list[Worker] = field(default_factory=list)
    hosts: list[Any] = field(default_factory=list)

    async def open(self) -> None:
        from stagewise_sql import SqlBackend

        self.backend = await SqlBackend.connect(self.url)
        self.kernel = self.backend.kernel(WorkflowRegistry(workflows))

    async def start_local_host(self, worker_id: str, *, concurrency: int) -> Any:
        """A node host in this process, on the client's backend (an application embedding
        stagewise); stopped by `close`."""
        from stagewise import KernelSettings
        from stagewise_node import NodeHostSettings, node_host

        settings = NodeHostSettings(
            concurrency=concurrency,
            job_poll_interval=self.poll_interval,
            claim_interval=self.poll_interval,
        )
        host = node_host(
            self.backend,
            WorkflowRegistry(workflows),
            worker_id=worker_id,
            settings=settings,
            kernel_settings=KernelSettings(),
        )
        await host.start()
        self.hosts.append(host)
        return host

    async def close(self) -> None:
        for host in self.hosts:
            await host.stop(5)
            await host.kernel.aclose()
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(10)
        if self.kernel is not None:
            await self.kernel.aclose()
        if self.backend is not None:
            await self.backend.close()

    async def start_worker(
        self,
        worker_id: str,
        *,
        concurrency: int,
        lease: float = 30.0,
        exec_log: Path | None = None,
        wait: bool = True,
    ) -> Worker:
        n = len(self.workers)
        ready = self.tmp / f"ready-{n}"
        counts = self.tmp / f"counts-{n}.json"
        log = self.tmp / f"worker-{n}.log"
        env = {**os.environ, "BENCH_READY": str(ready), "BENCH_COUNTS": str(counts)}
        if exec_log is not None:
            env[EXEC_LOG_ENV] = str(exec_log)
        started = time.time()
        args = [
            *(sys.executable, str(HERE / "worker.py"), "worker", "workloads:workflows"),
            f"--db={self.url}",
            f"--concurrency={concurrency}",
            f"--worker-id={worker_id}",
            f"--lease={lease}",
            f"--poll-interval={self.poll_interval}",
            "--log-level=warning",
        ]
        proc = _spawn(args, env, log)
        worker = Worker(proc, worker_id, counts, log, started, ready)
        self.workers.append(worker)
        if wait:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {worker_id} did not start:\n{log.read_text()}")
                await asyncio.sleep(0.01)
        return worker

    async def stop_workers(self) -> dict[str, Any]:
        """SIGTERM every live worker, wait for it, and sum their counts."""
        live = [w for w in self.workers if w.proc.poll() is None]
        for w in live:
            w.proc.send_signal(signal.SIGTERM)
        total: Counter[str] = Counter()
        shapes: Counter[str] = Counter()
        for w in live:
            await asyncio.to_thread(w.proc.wait, 60)
            data = w.counts()
            total.update({k: v for k, v in data.items() if isinstance(v, int)})
            shapes.update(data.get("shapes", {}))
        return {**total, "shapes": dict(shapes.most_common(25))}

    # --- the client side --------------------------------------------------------------

    async def create(self, workflow_id: str, n: int) -> str:
        result = await self.kernel.dispatch(RunCreate(workflow_id=workflow_id, input={"n": n}))
        return str(result.run_id)

    async def create_many(self, workflow_id: str, count: int, *, concurrency: int = 8) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await self.create(workflow_id, i)

        await asyncio.gather(*(one(i) for i in range(count)))

    async def query(self, stmt: Any) -> list[Any]:
        async with self.backend.engine.connect() as conn:
            return list(await conn.execute(stmt))

    async def status_counts(self, workflow_id: str) -> Counter[str]:
        from stagewise_sql import metadata

        runs = metadata.tables["stagewise_runs"]

        rows = await self.query(
            select(runs.c.status, func.count())
            .where(runs.c.workflow_id == workflow_id)
            .group_by(runs.c.status)
        )
        return Counter({r[0]: r[1] for r in rows})

    async def wait_all_done(
        self, workflow_id: str, count: int, *, within: float, every: float = 0.05
    ) -> Counter[str]:
        deadline = time.monotonic() + within
        while True:
            counts = await self.status_counts(workflow_id)
            if counts["COMPLETED"] + counts["FAILED"] + counts["CANCELLED"] >= count:
                return counts
            if time.monotonic() > deadline:
                return counts
            for w in self.workers:
                if w.proc.poll() not in (None, -signal.SIGKILL):
                    raise RuntimeError(f"worker died:\n{w.log_file.read_text()[-3000:]}")
            await asyncio.sleep(every)

    async def span(self, workflow_id: str) -> tuple[datetime, datetime]:
        """(first created_at, last finished_at) of the workflow's runs: the kernel's times."""
        from stagewise_sql import metadata

        runs = metadata.tables["stagewise_runs"]

        rows = await self.query(
            select(func.min(runs.c.created_at), func.max(runs.c.finished_at)).where(
                runs.c.workflow_id == workflow_id
            )
        )
        first, last = rows[0]
        return _aware(first), _aware(last)

    async def latencies(self, workflow_id: str) -> list[float]:
        from stagewise_sql import metadata

        runs = metadata.tables["stagewise_runs"]

        rows = await self.query(
            select(runs.c.created_at, runs.c.finished_at).where(
                runs.c.workflow_id == workflow_id, runs.c.status == "COMPLETED"
            )
        )
        return [(_aware(b) - _aware(a)).total_seconds() * 1000 for a, b in rows]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _aware(value: Any) -> datetime:
    from datetime import UTC

    if isinstance(value, str):  # SQLite text when read without the column type
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@contextlib.asynccontextmanager
async def bench(db: str, poll_interval: float) -> AsyncIterator[Bench]:
    async with fresh_database(db) as url:
        with tempfile.TemporaryDirectory(prefix="stagewise-bench-") as tmp:
            b = Bench(url=url, db=db, tmp=Path(tmp), poll_interval=poll_interval)
            try:
                await b.open()
                yield b
            finally:
                await b.close()


# --- workloads ---------------------------------------------------------------------------


def emit(result: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(result), flush=True)
    return result


async def w1(
    db: str,
    sizes: Sizes,
    poll: float,
    variant: str,
    prepare: Callable[[Bench], Awaitable[None]] | None = None,
    label: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """W1; `prepare` fills the database before the workers start (bench/sleep.py puts a
    sleeping backlog there), and `label` goes into the result."""
    workers, slots = {"c10": (1, 10), "c16": (1, 16), "2proc": (2, 16)}[variant]
    runs = sizes.w1_runs
    async with bench(db, poll) as b:
        if prepare is not None:
            await prepare(b)
        for i in range(workers):
            await b.start_worker(f"w1-{i}", concurrency=slots)
        began = time.monotonic()
        cpu0 = _cpu()
        await b.create_many("bench-three", runs)
        created = time.monotonic() - began
        counts = await b.wait_all_done("bench-three", runs, within=600)
        observed = time.monotonic() - began
        client_cpu = _cpu() - cpu0
        await asyncio.sleep(0.3)  # let the last flushes land before the counts are taken
        totals = await b.stop_workers()
        first, last = await b.span("bench-three")
    wall = (last - first).total_seconds()
    stages = counts["COMPLETED"] * 3
    return emit(
        {
            "workload": "W1",
            "variant": f"{workers}x{slots}",
            "db": db,
            "runs": runs,
            "completed": counts["COMPLETED"],
            "failed": counts["FAILED"],
            "wall_s": round(wall, 3),
            "observed_s": round(observed, 3),
            "create_s": round(created, 3),
            "worker_cpu_ms_per_stage": round(totals.get("cpu_ms", 0) / max(stages, 1), 2),
            "client_cpu_ms_per_run": round(client_cpu * 1000 / runs, 2),
            "runs_per_s": round(counts["COMPLETED"] / wall, 1),
            "stages_per_s": round(stages / wall, 1),
            "worker_tx_per_stage": round(totals.get("commits", 0) / max(stages, 1), 2),
            "worker_stmts_per_stage": round(totals.get("statements", 0) / max(stages, 1), 2),
            "worker_trips_per_stage": round(totals.get("trips", 0) / max(stages, 1), 2),
            "statement_shapes": totals.get("shapes", {}),
            **(label or {}),
        }
    )


async def w2(db: str, sizes: Sizes, poll: float, variant: str) -> dict[str, Any]:
    """`worker`: the runs go to a separate worker process (the client creates, the worker
    claims on the NOTIFY); `inproc`: this process embeds a node host and creates each run
    with `NodeHost.submit`, which starts it on that host in the creating transaction, then
    awaits it with `Kernel.wait_for_run` - the peer's in-process configuration, through the
    same jobs, leases and outbox."""
    runs = sizes.w2_runs
    async with bench(db, poll) as b:
        if variant == "worker":
            await b.start_worker("w2", concurrency=10)

            async def one(i: int) -> None:
                await b.create("bench-three", i)
                await b.wait_all_done("bench-three", i + 1, within=60, every=0.002)
        else:
            host = await b.start_local_host("w2-local", concurrency=10)

            async def one(i: int) -> None:
                created = await host.submit(RunCreate(workflow_id="bench-three", input={"n": i}))
                await host.kernel.wait_for_run(created.run_id, timeout=60)

        for i in range(3):  # warm-up, not counted
            await one(i)
        await asyncio.sleep(0.2)
        from stagewise_sql import metadata

        runs_t = metadata.tables["stagewise_runs"]

        warm = {r[0] for r in await b.query(select(runs_t.c.run_id))}
        for i in range(runs):
            await one(3 + i)
        figures = sorted(
            ms for run_id, ms in await _latencies_by_run(b, "bench-three") if run_id not in warm
        )
        counts = await b.status_counts("bench-three")
        await b.stop_workers()
    q = statistics.quantiles(figures, n=100, method="inclusive")
    return emit(
        {
            "workload": "W2",
            "variant": "1x10" if variant == "worker" else "in-process 1x10",
            "db": db,
            "runs": runs,
            "completed": counts["COMPLETED"] - 3,
            "failed": counts["FAILED"],
            "p50_ms": round(statistics.median(figures), 2),
            "p95_ms": round(q[94], 2),
            "p99_ms": round(q[98], 2),
            "max_ms": round(figures[-1], 2),
        }
    )


async def _latencies_by_run(b: Bench, workflow_id: str) -> list[tuple[str, float]]:
    from stagewise_sql import metadata

    runs = metadata.tables["stagewise_runs"]

    rows = await b.query(
        select(runs.c.run_id, runs.c.created_at, runs.c.finished_at).where(
            runs.c.workflow_id == workflow_id, runs.c.status == "COMPLETED"
        )
    )
    return [(r[0], (_aware(r[2]) - _aware(r[1])).total_seconds() * 1000) for r in rows]


async def w3(db: str, sizes: Sizes, poll: float) -> dict[str, Any]:
    workflow_id = f"bench-fanout-{sizes.w3_fanout}"
    async with bench(db, poll) as b:
        await b.start_worker("w3", concurrency=16)
        await b.create(workflow_id, 0)
        counts = await b.wait_all_done(workflow_id, 1, within=600, every=0.01)
        first, last = await b.span(workflow_id)
        await b.stop_workers()
    return emit(
        {
            "workload": "W3",
            "variant": f"{sizes.w3_fanout}-way, 1x16",
            "db": db,
            "runs": 1,
            "completed": counts["COMPLETED"],
            "failed": counts["FAILED"],
            "wall_s": round((last - first).total_seconds(), 3),
        }
    )


async def w4(db: str, sizes: Sizes, poll: float, variant: str, slots: int) -> dict[str, Any]:
    runs = sizes.w4_runs
    workflow_id = "bench-recovery"
    async with bench(db, poll) as b:
        log = b.tmp / "executions.log"
        lease = sizes.w4_lease
        await b.create_many(workflow_id, runs)  # all waiting before the worker starts
        first = await b.start_worker("w4-a", concurrency=slots, lease=lease, exec_log=log)
        # Mid-way: half of the slow stage's bodies have run (whatever order the worker
        # takes the stages in, half the work is left).
        while _slow_done(log) < runs // 2:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        first.proc.kill()
        await asyncio.to_thread(first.proc.wait, 30)
        killed_at = time.time()
        before = _executions(log)
        slow_at_kill = _slow_done(log)
        done_at_kill = (await b.status_counts(workflow_id))["COMPLETED"]
        restart_id = "w4-a" if variant == "same-id" else "w4-b"
        second = await b.start_worker(
            restart_id, concurrency=slots, lease=lease, exec_log=log, wait=False
        )
        counts = await b.wait_all_done(workflow_id, runs, within=600, every=0.01)
        _, last = await b.span(workflow_id)
        ready_at = second.ready_at() or second.started_at
        await b.stop_workers()
    after = _executions(log)
    again = sum(1 for n in after.values() if n > 1)
    finished_before = sum(1 for key in before if after[key] > 1)
    return emit(
        {
            "workload": "W4",
            "variant": f"{variant}, 1x{slots}",
            "db": db,
            "runs": runs,
            "lease_s": lease,
            "completed_at_kill": done_at_kill,
            "slow_done_at_kill": slow_at_kill,
            "completed": counts["COMPLETED"],
            "failed": counts["FAILED"],
            "stages_executed_more_than_once": again,
            "finished_bodies_executed_again": finished_before,
            "recovery_s": round(last.timestamp() - second.started_at, 3),
            "startup_s": round(ready_at - second.started_at, 3),
            "kill_to_restart_s": round(second.started_at - killed_at, 3),
        }
    )


def _slow_done(log: Path) -> int:
    """How many bodies of the slow stage `b` ran to their end."""
    return sum(1 for (_, stage_id) in _executions(log) if stage_id == "b")


def _executions(log: Path) -> Counter[tuple[str, str]]:
    """How many times each (run, stage) body ran to its end."""
    out: Counter[tuple[str, str]] = Counter()
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                out[(parts[0], parts[1])] += 1
    return out


# --- the report --------------------------------------------------------------------------

_COLUMNS = {
    "W1": (
        "runs_per_s",
        "stages_per_s",
        "wall_s",
        "worker_tx_per_stage",
        "worker_stmts_per_stage",
        "worker_trips_per_stage",
    ),
    "W2": ("p50_ms", "p95_ms", "p99_ms"),
    "W3": ("wall_s",),
    "W4": ("recovery_s", "stages_executed_more_than_once", "completed"),
}


def write_markdown(results: Sequence[dict[str, Any]], args: argparse.Namespace) -> Path:
    RESULTS.mkdir(exist_ok=True)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["workload"], r["variant"], r["db"]), []).append(r)
    lines = [
        "# stagewise benchmark results",
        "",
        f"{datetime.now().isoformat(timespec='seconds')} · {platform.node()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · "
        f"{'quick' if args.quick else 'full'} sizes · medians of {args.repeat} · "
        f"worker --poll-interval {args.poll_interval}",
        "",
        "| workload | variant | db | n | figures (median) |",
        "|---|---|---|---|---|",
    ]
    for (workload, variant, db), rs in groups.items():
        figures = []
        for col in _COLUMNS[workload]:
            values = [r[col] for r in rs if col in r]
            if values:
                figures.append(f"{col} {statistics.median(values):g}")
        ok = min(r["completed"] for r in rs)
        lines.append(
            f"| {workload} | {variant} | {db} | {rs[0]['runs']} ({ok} done) | "
            + ", ".join(figures)
            + " |"
        )
    path = RESULTS / "latest.md"
    path.write_text("\n".join(lines) + "\n")
    return path


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--workloads", default="W1,W2,W3,W4")
    parser.add_argument("--quick", action="store_true", help="small counts (< 60 s on SQLite)")
    parser.add_argument("--repeat", type=int, default=1, help="run each workload N times")
    parser.add_argument(
        "--poll-interval", type=float, default=2.0, help="the workers' fallback polling"
    )
    parser.add_argument(
        "--w1-variants", default="c10,c16,2proc", help="W1 variants: c10, c16, 2proc"
    )
    parser.add_argument("--w2-runs", type=int, help="override W2's run count")
    parser.add_argument(
        "--w2-variants", default="worker,inproc", help="W2 variants: worker, inproc"
    )
    parser.add_argument(
        "--w4-slots",
        default="16",
        help="W4 job slots, comma-separated for several (its stages mostly sleep)",
    )
    parser.add_argument(
        "--w4-lease",
        type=float,
        help="W4's lease in seconds (5; 30 is a worker's default): how long a new id waited",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.w2_runs:
        sizes = replace(sizes, w2_runs=args.w2_runs)
    if args.w4_lease:
        sizes = replace(sizes, w4_lease=args.w4_lease)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    chosen = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    results: list[dict[str, Any]] = []
    poll = args.poll_interval
    for db in dbs:
        for _ in range(args.repeat):
            if "W1" in chosen:
                for variant in args.w1_variants.split(","):
                    results.append(await w1(db, sizes, poll, variant.strip()))
            if "W2" in chosen:
                for variant in args.w2_variants.split(","):
                    results.append(await w2(db, sizes, poll, variant.strip()))
            if "W3" in chosen:
                results.append(await w3(db, sizes, poll))
            if "W4" in chosen:
                for slots in (int(n) for n in args.w4_slots.split(",")):
                    for variant in ("same-id", "new-id"):
                        results.append(await w4(db, sizes, poll, variant, slots))
    path = write_markdown(results, args)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
