"""Runs move through their groups with deterministic data flow."""

from __future__ import annotations

from stagewise import RunStatus, StageContext, StageStatus, WorkflowBuilder, define_stage
from stagewise.testing import TestEnvironment
from tests.unit.workflows import Num, four_groups


async def test_four_groups_with_a_parallel_group_complete_with_the_right_data_flow() -> None:
    env = TestEnvironment([four_groups()])
    run = await env.run("four", {"n": 1})

    assert run.status is RunStatus.COMPLETED
    # start: 2; left: 3, right: 4; join: 7; finish: 8
    assert run.output == {"n": 8}
    stages = await env.stages(run.run_id)
    assert {sid: s.output for sid, s in stages.items()} == {
        "start": {"n": 2},
        "left": {"n": 3},
        "right": {"n": 4},
        "join": {"n": 7},
        "finish": {"n": 8},
    }
    assert all(s.status is StageStatus.COMPLETED and s.attempt == 1 for s in stages.values())


async def test_after_a_parallel_group_the_next_stage_gets_a_dict_keyed_by_stage_id() -> None:
    seen: list[object] = []

    async def record(ctx: StageContext) -> dict[str, int]:
        seen.append(ctx.input)
        return {"ok": 1}

    wf = (
        WorkflowBuilder("fan")
        .parallel(
            [
                define_stage(id="a", execute=lambda ctx: {"v": "a"}),
                define_stage(id="b", execute=lambda ctx: [1, 2]),
            ]
        )
        .pipe(define_stage(id="after", execute=record))
        .build()
    )
    env = TestEnvironment([wf])
    run = await env.run("fan", {"x": 1})
    assert run.status is RunStatus.COMPLETED
    assert seen == [{"a": {"v": "a"}, "b": [1, 2]}]


async def test_ctx_require_reads_any_earlier_output_as_its_model() -> None:
    got: list[object] = []

    async def last(ctx: StageContext) -> int:
        first = ctx.require("first")
        got.append(first)
        got.append(ctx.optional("nope"))
        return int(first.n)

    wf = (
        WorkflowBuilder("req", input=Num)
        .pipe(define_stage(id="first", input=Num, output=Num, execute=lambda c: Num(n=c.input.n)))
        .pipe(define_stage(id="middle", execute=lambda c: "x"))
        .pipe(define_stage(id="last", execute=last, requires=["first"]))
        .build()
    )
    env = TestEnvironment([wf])
    run = await env.run("req", {"n": 5})
    assert run.status is RunStatus.COMPLETED
    assert got == [Num(n=5), None]
    assert run.output == 5


async def test_events_of_a_run_are_numbered_without_gaps_in_commit_order() -> None:
    env = TestEnvironment([four_groups()])
    run = await env.run("four", {"n": 1})
    events = env.sink.of_run(run.run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "run.created"
    assert events[-1].type == "run.completed"
    assert len({e.event_id for e in events}) == len(events)
    assert sum(e.type == "stage.completed" for e in events) == 5


async def test_large_outputs_go_to_the_blob_store_and_still_flow() -> None:
    big = "x" * 200_000

    wf = (
        WorkflowBuilder("big")
        .pipe(define_stage(id="make", execute=lambda ctx: {"blob": big}))
        .pipe(define_stage(id="use", execute=lambda ctx: len(ctx.input["blob"])))
        .pipe(define_stage(id="echo", execute=lambda ctx: ctx.require("make")))
        .build()
    )
    env = TestEnvironment([wf])
    run = await env.run("big", None)
    assert run.status is RunStatus.COMPLETED
    stages = await env.stages(run.run_id)
    assert stages["make"].output is None and stages["make"].output_ref is not None
    assert await env.blobs.has(stages["make"].output_ref)
    assert stages["use"].output == 200_000
    assert run.output_ref is not None
    assert await env.output(run.run_id) == {"blob": big}
