"""The workflow `stagewise demo` runs: a document pipeline, in real time but quickly.

    parse ──> [ count_words | keywords | translate ] ──> summarize

* `parse` is a plain `def` (it runs on the worker's thread pool);
* the middle group runs in parallel;
* `count_words` fails on its first attempt (a flaky "service") and is retried;
* `translate` is an async-batch stage: it submits a job to an "external service", suspends,
  and is resumed when `check_completion` finds the job done, a few polls later;
* `summarize` joins everything.

Serve it from any worker with `stagewise worker stagewise_node.demo:workflows`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

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

__all__ = ["DEMO_INPUT", "Document", "Stats", "Summary", "document_pipeline", "workflows"]

STEP = 0.35
"""Seconds each stage pretends to work (the whole run takes a few seconds)."""


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


def parse(ctx: StageContext) -> Document:
    ctx.log("info", "parsing", title=ctx.input.title)
    time.sleep(STEP)  # blocking work is fine here: sync stages run on a thread pool
    return Document(title=ctx.input.title.strip(), body=" ".join(ctx.input.body.split()))


async def count_words(ctx: StageContext) -> Stats:
    ctx.progress(20, "calling the word-count service")
    await asyncio.sleep(STEP)
    if ctx.attempt == 1:
        raise ConnectionError("word-count service unavailable (the demo fails it once)")
    doc: Document = ctx.input
    return Stats(words=len(doc.body.split()), lines=doc.body.count(". ") + 1)


async def keywords(ctx: StageContext) -> list[str]:
    await asyncio.sleep(STEP * 2)
    doc: Document = ctx.input
    words = {w.strip(".,;:").lower() for w in doc.body.split() if len(w.strip(".,;:")) > 6}
    return sorted(words)[:5]


async def submit_translation(ctx: StageContext) -> Suspend:
    await asyncio.sleep(STEP / 2)
    ctx.progress(10, "submitted to the translation service")
    ready_at = datetime.now(UTC).timestamp() + 1.2
    state = {"job": f"tr-{ctx.run_id[-6:]}", "ready_at": ready_at}
    return Suspend(state=state, poll_interval=0.4, max_wait=60)


async def check_translation(state: dict[str, Any], ctx: StageContext) -> Ready | NotReady:
    if datetime.now(UTC).timestamp() < state["ready_at"]:
        return NotReady()
    doc: Document = ctx.require("parse")
    return Ready(output=doc.body.upper())


async def summarize(ctx: StageContext) -> Summary:
    await asyncio.sleep(STEP)
    stats: Stats = ctx.require("count_words")
    return Summary(
        title=ctx.require("parse").title,
        words=stats.words,
        keywords=ctx.input["keywords"],
        translation=ctx.input["translate"][:48],
    )


document_pipeline = (
    WorkflowBuilder(
        "document-pipeline",
        description="Parse a document, analyse it three ways at once, and summarize it.",
        input=Document,
        output=Summary,
    )
    .pipe(define_stage(id="parse", input=Document, output=Document, execute=parse))
    .parallel(
        [
            define_stage(
                id="count_words",
                input=Document,
                output=Stats,
                execute=count_words,
                retry=RetryPolicy(max_attempts=3, initial_backoff=0.5, jitter=0),
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

workflows = [document_pipeline]

DEMO_INPUT = {
    "title": "  Durable workflows  ",
    "body": "Stagewise keeps every workflow durable. Crashes, restarts and redeploys lose "
    "nothing: each stage's outcome is committed before anyone hears of it, and a worker "
    "that disappears simply hands its attempts to another.",
}
