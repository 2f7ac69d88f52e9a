"""A document pipeline, end to end: a parallel group, a stage that fails once and is
retried, and an async-batch stage that suspends while an "external job" runs.

Runs on the in-memory adapters with a FakeClock, so an hour of backoff and polling takes
milliseconds. (`stagewise demo` runs the same kind of workflow on SQLite with a real worker.)
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from stagewise import (
    NotReady,
    Ready,
    RetryPolicy,
    StageContext,
    Suspend,
    WorkflowBuilder,
    define_async_batch_stage,
    define_stage,
)
from stagewise.testing import TestEnvironment


class Document(BaseModel):
    title: str
    body: str


class Stats(BaseModel):
    words: int
    lines: int


class Summary(BaseModel):
    title: str
    words: int
    keywords: list[str]
    translation: str


def parse(ctx: StageContext) -> Document:  # a plain def: runs on the thread pool
    ctx.log("info", "parsing", title=ctx.input.title)
    return Document(title=ctx.input.title.strip(), body=ctx.input.body.strip())


_flaky_calls = 0


async def count_words(ctx: StageContext) -> Stats:
    global _flaky_calls
    _flaky_calls += 1
    if _flaky_calls == 1:
        raise ConnectionError("word-count service unavailable (first call fails on purpose)")
    doc = ctx.input
    return Stats(words=len(doc.body.split()), lines=doc.body.count("\n") + 1)


async def keywords(ctx: StageContext) -> list[str]:
    words = [w.strip(".,").lower() for w in ctx.input.body.split() if len(w) > 6]
    return sorted(set(words))[:5]


async def submit_translation(ctx: StageContext) -> Suspend:
    ctx.progress(10, "submitted to the translation service")
    return Suspend(state={"job": "tr-1"}, poll_interval=600, max_wait=3600 * 6)


_translation_checks = 0


async def check_translation(state: dict, ctx: StageContext) -> Ready | NotReady:
    # A real check would ask the service about state["job"]; this one is done on the
    # second look, ten minutes after the first.
    global _translation_checks
    _translation_checks += 1
    if _translation_checks < 2:
        return NotReady(next_check_in=600)
    doc: Document = ctx.require("parse")
    return Ready(output=doc.body.upper())


async def summarize(ctx: StageContext) -> Summary:
    stats: Stats = ctx.require("count_words")
    return Summary(
        title=ctx.require("parse").title,
        words=stats.words,
        keywords=ctx.input["keywords"],
        translation=ctx.input["translate"][:40],
    )


pipeline = (
    WorkflowBuilder("document-pipeline", input=Document, output=Summary)
    .pipe(define_stage(id="parse", input=Document, output=Document, execute=parse))
    .parallel(
        [
            define_stage(
                id="count_words",
                input=Document,
                output=Stats,
                execute=count_words,
                retry=RetryPolicy(max_attempts=3, initial_backoff=30),
            ),
            define_stage(id="keywords", input=Document, execute=keywords),
            define_async_batch_stage(
                id="translate",
                input=Document,
                execute=submit_translation,
                check_completion=check_translation,
            ),
        ]
    )
    .pipe(define_stage(id="summarize", output=Summary, execute=summarize, requires=["parse"]))
    .build()
)


async def main() -> None:
    env = TestEnvironment([pipeline])
    doc = {
        "title": " Durable workflows ",
        "body": "Stagewise keeps every workflow durable.\n"
        "Crashes, restarts and redeploys lose nothing.",
    }
    run_id = await env.create_run("document-pipeline", doc)
    report = await env.run_until_idle()
    run = await env.get_run(run_id)

    print(
        f"run {run_id}: {run.status.value}  (skipped {report.skipped} of fake time "
        f"in {report.steps} steps)"
    )
    print("\nevents:")
    for event in env.sink.of_run(run_id):
        stage = getattr(event, "stage_id", "")
        extra = f" attempt {event.attempt}" if hasattr(event, "attempt") else ""
        print(f"  {event.seq:>3}  {event.occurred_at:%H:%M:%S}  {event.type:<16} {stage}{extra}")
    print("\nstages:")
    for sid, stage in (await env.stages(run_id)).items():
        error = f"  last error: {stage.error.message}" if stage.error else ""
        print(f"  {sid:<12} {stage.status.value:<10} attempts={stage.attempt}{error}")
    print("\noutput:", run.output)
    if run.status.value != "COMPLETED":
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
