"""Hostile input is refused with a typed error and writes nothing.

Hypothesis builds command dictionaries for every command: a field missing, a field of the
wrong type, an unknown field, an unknown command type, identifiers that are empty, huge or
full of unicode, limits out of range, deeply nested and huge JSON, workflows, runs and jobs
that do not exist. Each one dispatched to the kernel must be refused with a
`StagewiseError` (never a bare `ValidationError`, `KeyError`, `RecursionError`...) and leave
the database, the queue and the blob store exactly as they were.

Then the two refusals a stage author meets: an output that does not match the stage's
declared model fails the stage (without retrying it) with a message naming the stage, the
model and the field; and a run input over `max_payload_bytes` is refused at `run.create`.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from stagewise import (
    InvalidCommandError,
    InvalidConfigError,
    InvalidRunInputError,
    KernelSettings,
    LeaseLost,
    NotFoundError,
    PayloadTooLargeError,
    RetryPolicy,
    RunStatus,
    StageContext,
    StageStatus,
    StagewiseError,
    WorkflowBuilder,
    define_stage,
)
from stagewise._kernel import HANDLERS
from stagewise.testing import TestEnvironment


class Order(BaseModel):
    order_id: str
    amount: int


class Receipt(BaseModel):
    order_id: str
    charged: int


def charge(ctx: StageContext) -> dict[str, Any]:
    return {"order_id": ctx.input.order_id, "charged": ctx.input.amount}


checkout = (
    WorkflowBuilder("checkout", input=Order)
    .pipe(define_stage(id="charge", input=Order, output=Receipt, execute=charge))
    .build()
)

free = WorkflowBuilder("free").pipe(define_stage(id="echo", execute=lambda ctx: ctx.input)).build()
"""A workflow that takes any JSON input."""

# --- hostile values ----------------------------------------------------------------------

LIMIT = 4096  # the kernel's max_payload_bytes in these tests


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=40
)
huge_text = st.integers(201, 50_000).map(lambda n: "\U0001d535" * n)  # a 4-byte character
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)
not_a_string = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(json_leaf, max_size=3),
    st.dictionaries(text, json_leaf, max_size=3),
)
bad_ident = st.one_of(
    not_a_string, st.just(""), huge_text, text.map(lambda t: f"{t[:100]}\x00{t[100:]}")
)
"""Never a valid identifier: not a string, empty, over 200 characters, or holding a NUL
(which PostgreSQL cannot store)."""
words = st.text(alphabet="abcxyzé☃ -", min_size=1, max_size=20)
"""Text that no lax parser reads as a number or a date."""
not_a_number = st.one_of(
    st.none(),
    words,
    st.floats().filter(lambda f: not f.is_integer()),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(words, st.integers(), max_size=2),
)
not_a_date = st.one_of(
    st.none(), words, st.lists(st.integers(), max_size=2), st.dictionaries(words, st.integers())
)
"""(Numbers are dates to pydantic: seconds since the epoch.)"""
bad_limit = st.one_of(st.integers(max_value=0), st.integers(min_value=10_001), not_a_number)
unknown_id = st.one_of(
    text.filter(lambda s: 0 < len(s) <= 200 and "\x00" not in s), st.just("ünïcødé-☃-🚀")
)
deep_json = st.integers(200, 3000).map(nested)


def job(**changes: Any) -> dict[str, Any]:
    base = {
        "job_id": "job-1",
        "run_id": "run-that-does-not-exist",
        "workflow_id": "checkout",
        "stage_id": "charge",
        "attempt": 1,
        "available_at": "2026-01-01T00:00:00+00:00",
    }
    return {**base, **changes}


VALID: dict[str, dict[str, Any]] = {
    "run.create": {"type": "run.create", "workflow_id": "checkout", "input": {}},
    "run.claimPending": {"type": "run.claimPending", "limit": 5},
    "job.execute": {"type": "job.execute", "job": job(), "worker_id": "w"},
    "run.transition": {"type": "run.transition", "run_id": "r"},
    "stage.pollSuspended": {"type": "stage.pollSuspended", "limit": 5, "poller_id": "p"},
    "lease.reapStale": {"type": "lease.reapStale", "limit": 5},
    "outbox.flush": {"type": "outbox.flush", "limit": 5, "flusher_id": "f"},
    "run.cancel": {"type": "run.cancel", "run_id": "r"},
    "run.rerunFrom": {"type": "run.rerunFrom", "run_id": "r", "stage_id": "charge"},
    "plugin.replayDLQ": {"type": "plugin.replayDLQ", "plugin_id": "p"},
    "job.heartbeat": {"type": "job.heartbeat", "job": job(), "worker_id": "w"},
    "job.release": {"type": "job.release", "job": job(), "worker_id": "w"},
}
"""A well-formed instance of every command (the hostile ones are made from these)."""

REQUIRED = {
    "run.create": ["workflow_id"],
    "job.execute": ["job", "worker_id"],
    "run.transition": ["run_id"],
    "run.cancel": ["run_id"],
    "run.rerunFrom": ["run_id", "stage_id"],
    "job.heartbeat": ["job", "worker_id"],
    "job.release": ["job", "worker_id"],
}
IDENTS = {
    "run.create": ["workflow_id"],
    "job.execute": ["worker_id"],
    "run.transition": ["run_id"],
    "stage.pollSuspended": ["poller_id"],
    "outbox.flush": ["flusher_id"],
    "run.cancel": ["run_id"],
    "run.rerunFrom": ["run_id", "stage_id"],
    "job.heartbeat": ["worker_id"],
    "job.release": ["worker_id"],
}
LIMITS = ["run.claimPending", "stage.pollSuspended", "lease.reapStale", "outbox.flush"]
JOB_FIELDS = ["job_id", "run_id", "workflow_id", "stage_id", "attempt", "available_at"]
JOBS = ["job.execute", "job.heartbeat", "job.release"]


FIELDS = {model.model_fields["type"].default: set(model.model_fields) for model in HANDLERS}


def _structural(command: str) -> st.SearchStrategy[dict[str, Any]]:
    """Commands that cannot validate: wrong shape, wrong types, out of range."""
    base = VALID[command]
    fields = FIELDS[command]
    options: list[st.SearchStrategy[dict[str, Any]]] = [
        # an unknown field (commands forbid extras)
        st.tuples(text.filter(lambda k: k not in fields), json_value).map(
            lambda kv: {**base, kv[0]: kv[1]}
        ),
        # the type discriminator wrong or missing
        st.one_of(not_a_string, text.filter(lambda t: t not in VALID)).map(
            lambda t: {**base, "type": t}
        ),
        st.just({k: v for k, v in base.items() if k != "type"}),
        # not a dict of fields at all: every field at once hostile
        st.dictionaries(text, json_value, max_size=5)
        .map(lambda d: {**d, "type": command})
        .filter(lambda d: any(k not in fields for k in d)),
    ]
    for name in REQUIRED.get(command, []):
        options.append(st.just({k: v for k, v in base.items() if k != name}))
    for name in IDENTS.get(command, []):
        options.append(st.tuples(st.just(name), bad_ident).map(lambda nv: {**base, nv[0]: nv[1]}))
    if command in LIMITS:
        options.append(bad_limit.map(lambda v: {**base, "limit": v}))
    if command in JOBS:
        options.append(
            st.sampled_from(JOB_FIELDS).map(
                lambda f: {**base, "job": {k: v for k, v in base["job"].items() if k != f}}
            )
        )
        options.append(
            st.one_of(
                not_a_number.map(lambda v: ("attempt", v)),
                not_a_date.map(lambda v: ("available_at", v)),
            ).map(lambda fv: {**base, "job": {**base["job"], fv[0]: fv[1]}})
        )
        options.append(not_a_string.map(lambda v: {**base, "job": v}))
    if command == "run.create":
        config = st.one_of(
            st.integers(),
            words,
            st.lists(json_leaf, max_size=2),
            st.dictionaries(words, json_leaf, min_size=1),
        )
        options.append(config.map(lambda v: {**base, "config": v}))
        priority = st.one_of(
            st.integers(min_value=1_000_001),
            st.integers(max_value=-1_000_001),
            not_a_number.filter(lambda v: v is not None),
        )
        options.append(priority.map(lambda v: {**base, "priority": v}))
    return st.one_of(options)


def _semantic(command: str) -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed commands about things that do not exist, or with unusable payloads."""
    base = VALID[command]
    if command == "run.create":
        return st.one_of(
            unknown_id.filter(lambda w: w != "checkout").map(lambda w: {**base, "workflow_id": w}),
            json_value.map(lambda v: {**base, "input": v}),  # never an Order
            deep_json.map(lambda v: {**base, "input": {"order_id": v, "amount": 1}}),
            text.map(lambda t: {**base, "input": {"order_id": f"o\x00{t}", "amount": 1}}),
            json_value.map(lambda v: {**base, "workflow_id": "free", "input": [v, "\x00"]}),
            st.integers(1_500, 20_000).map(
                lambda n: {**base, "workflow_id": "free", "input": nested(n)}
            ),
            st.integers(LIMIT, 100_000).map(
                lambda n: {**base, "workflow_id": "free", "input": ["☃" * (n // 3 + 1)]}
            ),
            st.integers(LIMIT, 100_000).map(
                lambda n: {**base, "input": {"order_id": "x" * n, "amount": 1}}
            ),
            st.dictionaries(unknown_id, st.dictionaries(text, json_leaf), min_size=1).map(
                lambda c: {**base, "input": {"order_id": "o", "amount": 1}, "config": c}
            ),
        )
    if command in ("run.transition", "run.cancel", "run.rerunFrom"):
        return unknown_id.map(lambda r: {**base, "run_id": r})
    if command in ("job.execute", "job.heartbeat"):
        return st.one_of(
            unknown_id.map(lambda r: {**base, "job": job(run_id=r)}),
            unknown_id.filter(lambda w: w != "checkout").map(
                lambda w: {**base, "job": job(workflow_id=w)}
            ),
        )
    return st.nothing()


def _snapshot(env: TestEnvironment) -> Any:
    state = env.persistence._state  # type: ignore[attr-defined]
    tables = {name: dict(table) for name, table in vars(state).items()}
    blobs = dict(env.blobs._blobs)  # type: ignore[attr-defined]
    return copy.deepcopy((tables, env.queue.jobs(), blobs))  # type: ignore[attr-defined]


def _hostile_env() -> TestEnvironment:
    return TestEnvironment([checkout, free], settings=KernelSettings(max_payload_bytes=LIMIT))


def _check_refused(
    runner: asyncio.Runner, env: TestEnvironment, command: dict[str, Any]
) -> StagewiseError:
    before = _snapshot(env)
    try:
        result = runner.run(env.kernel.dispatch(command))
    except StagewiseError as exc:
        refusal = exc
    else:
        raise AssertionError(f"accepted {str(command)[:300]}: {result!r}")
    assert _snapshot(env) == before, f"{type(refusal).__name__} but something was written"
    assert refusal.message
    return refusal


SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("command", sorted(VALID))
def test_a_malformed_command_is_refused_with_a_typed_error_and_writes_nothing(
    command: str,
) -> None:
    with asyncio.Runner() as runner:
        env = _hostile_env()

        @SETTINGS
        @given(_structural(command))
        def check(hostile: dict[str, Any]) -> None:
            refusal = _check_refused(runner, env, hostile)
            assert isinstance(refusal, InvalidCommandError), refusal
            assert refusal.errors, "the structured validation errors come along"

        try:
            check()
        finally:
            runner.run(env.kernel.aclose())


SEMANTIC = [
    "run.create",
    "run.transition",
    "run.cancel",
    "run.rerunFrom",
    "job.execute",
    "job.heartbeat",
]


@pytest.mark.parametrize("command", SEMANTIC)
def test_a_command_about_something_that_does_not_exist_or_too_big_is_refused_and_writes_nothing(
    command: str,
) -> None:
    wanted: tuple[type[StagewiseError], ...] = (
        (NotFoundError, InvalidRunInputError, InvalidConfigError, PayloadTooLargeError)
        if command == "run.create"
        else (NotFoundError, LeaseLost)
    )
    with asyncio.Runner() as runner:
        env = _hostile_env()

        @SETTINGS
        @given(_semantic(command))
        def check(hostile: dict[str, Any]) -> None:
            refusal = _check_refused(runner, env, hostile)
            assert isinstance(refusal, wanted), repr(refusal)

        try:
            check()
        finally:
            runner.run(env.kernel.aclose())


# --- what a stage author meets ------------------------------------------------------------


async def test_a_stage_output_that_fails_its_schema_fails_the_stage_with_a_clear_message() -> None:
    def wrong(ctx: StageContext) -> dict[str, Any]:
        return {"order_id": ctx.input.order_id, "charged": "a lot"}

    bad = (
        WorkflowBuilder("bad-checkout", input=Order)
        .pipe(
            define_stage(
                id="charge",
                input=Order,
                output=Receipt,
                execute=wrong,
                retry=RetryPolicy(max_attempts=5),
            )
        )
        .build()
    )
    env = TestEnvironment([bad])
    run = await env.run("bad-checkout", {"order_id": "o-1", "amount": 3})
    stage = (await env.stages(run.run_id))["charge"]
    await env.kernel.aclose()

    assert run.status is RunStatus.FAILED
    assert stage.status is StageStatus.FAILED
    assert stage.attempt == 1, "an output that does not match its model is not retried"
    assert stage.error is not None
    assert stage.error.type == "StageOutputError"
    assert "'charge'" in stage.error.message
    assert "Receipt" in stage.error.message
    assert "charged" in stage.error.message
    assert run.error is not None and run.error.message == stage.error.message


async def test_a_run_input_over_the_size_limit_is_refused_at_create_but_one_at_it_is_not() -> None:
    env = _hostile_env()
    overhead = len('{"order_id":"","amount":1}') + len("{}")  # the (empty) config counts too
    at_limit = {"order_id": "x" * (LIMIT - overhead), "amount": 1}
    over = {"order_id": "x" * (LIMIT - overhead + 1), "amount": 1}

    with pytest.raises(PayloadTooLargeError) as refused:
        await env.create_run("checkout", over)
    assert refused.value.size == LIMIT + 1 and refused.value.limit == LIMIT
    assert "over the limit of 4096 bytes" in refused.value.message
    assert env.persistence.snapshot_runs() == []  # type: ignore[attr-defined]

    run_id = await env.create_run("checkout", at_limit)
    assert (await env.get_run(run_id)).status is RunStatus.PENDING
    await env.kernel.aclose()
