"""What reading runs accepts and refuses, on the in-memory adapters: filters, cursors,
limits, and metadata at creation (the contract suite runs the reads on every backend)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from stagewise import (
    IdempotencyKeyReusedError,
    InvalidInputError,
    RunCreate,
    RunFilter,
    RunStatus,
    WorkflowBuilder,
    define_stage,
)
from stagewise._h_runs import _fingerprint
from stagewise._query import decode_cursor, encode_cursor
from stagewise.testing import TestEnvironment
from tests.contract.factories import run


def env() -> TestEnvironment:
    flow = WorkflowBuilder("w").pipe(define_stage(id="s", execute=lambda c: 1)).build()
    return TestEnvironment([flow])


@pytest.mark.parametrize("name", ["failed", "FAILED", "Failed", RunStatus.FAILED])
def test_a_status_is_taken_in_any_case(name: str | RunStatus) -> None:
    assert RunFilter(status=name).status is RunStatus.FAILED
    assert RunFilter(status=name).run_status is RunStatus.FAILED


def test_an_unknown_status_names_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match=r"unknown run status 'done' .*COMPLETED"):
        RunFilter(status="done")


def test_a_time_without_a_timezone_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="created_after has no timezone"):
        RunFilter(created_after=datetime(2026, 12, 3))
    RunFilter(finished_before=datetime(2026, 12, 3, tzinfo=timezone(timedelta(hours=2))))


@pytest.mark.parametrize("key", ["", "with space", 'quote"', "x" * 65])
def test_a_metadata_key_no_run_can_have_is_refused(key: str) -> None:
    with pytest.raises(InvalidInputError, match="not a metadata key"):
        RunFilter(metadata={key: "v"})


def test_a_cursor_holds_its_runs_key_to_the_microsecond() -> None:
    at = datetime(2026, 12, 3, 7, 8, 9, 123456, tzinfo=UTC)
    cursor = encode_cursor(replace(run("a/b é"), created_at=at))
    assert decode_cursor(cursor) == (at, "a/b é")
    assert cursor.startswith("r1.") and cursor.isascii() and "=" not in cursor


@pytest.mark.parametrize(("limit", "ok"), [(0, False), (1, True), (10_000, True), (10_001, False)])
async def test_a_page_is_from_1_to_10000_long(limit: int, ok: bool) -> None:
    e = env()
    if ok:
        await e.kernel.list_runs(limit=limit)
        return
    with pytest.raises(InvalidInputError, match="limit must be from 1 to 10000"):
        await e.kernel.list_runs(limit=limit)


async def test_logs_after_a_negative_id_are_refused() -> None:
    e = env()
    run_id = await e.create_run("w")
    with pytest.raises(InvalidInputError, match="after must be 0"):
        await e.kernel.run_logs(run_id, after=-1)
    with pytest.raises(InvalidInputError, match="limit"):
        await e.kernel.run_logs(run_id, limit=0)


def test_keys_recorded_before_metadata_still_match_a_creation_with_none() -> None:
    data, config = {"n": 1}, {"s": {}}
    before = json.dumps(["w", data, config, 0], sort_keys=True, separators=(",", ":"))
    old = hashlib.sha256(before.encode()).hexdigest()
    assert _fingerprint(RunCreate(workflow_id="w"), data, config) == old
    assert _fingerprint(RunCreate(workflow_id="w", metadata={"k": "v"}), data, config) != old


async def test_a_key_reused_with_other_metadata_is_refused() -> None:
    e = env()
    first = await e.kernel.dispatch(
        RunCreate(workflow_id="w", idempotency_key="k", metadata={"a": "1"})
    )
    again = await e.kernel.dispatch(
        RunCreate(workflow_id="w", idempotency_key="k", metadata={"a": "1"})
    )
    assert (again.run_id, again.created) == (first.run_id, False)
    with pytest.raises(IdempotencyKeyReusedError):
        await e.kernel.dispatch(
            RunCreate(workflow_id="w", idempotency_key="k", metadata={"a": "2"})
        )
