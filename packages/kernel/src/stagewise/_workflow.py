"""Workflows: an ordered list of execution groups, built and checked once, up front."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, Self

from pydantic import BaseModel, ValidationError

from stagewise._errors import (
    InvalidConfigError,
    InvalidRunInputError,
    StageNotFoundError,
    StageOutputError,
    WorkflowDefinitionError,
    WorkflowNotFoundError,
    WorkflowVersionNotFoundError,
)
from stagewise._records import Json
from stagewise._stages import Seconds, Stage, _check_id, to_seconds


class Workflow:
    """A built workflow: its execution plan, stage lookup and schemas.

    Groups run in order; the stages of one group run concurrently. A stage's input is the
    previous group's output: that stage's output when the group has one stage, else a dict
    keyed by stage id. The first group gets the run input; the last group's output (shaped
    the same way) is the run's output.
    """

    def __init__(
        self,
        *,
        id: str,
        name: str,
        description: str | None,
        input: type[BaseModel] | None,
        output: type[BaseModel] | None,
        groups: tuple[tuple[Stage, ...], ...],
        version: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.description = description
        self.input = input
        self.output = output
        self.groups = groups
        self.timeout = timeout
        """Seconds a run may take from its creation (its deadline; None: no limit)."""
        self._stages = {s.id: s for group in groups for s in group}
        self._group_of = {s.id: i for i, group in enumerate(groups) for s in group}
        self.version = version or self.fingerprint()
        """What runs of this workflow are pinned to: given, or a fingerprint of the plan."""

    def __repr__(self) -> str:
        return f"Workflow({self.id!r}, version={self.version!r}, plan={self.plan})"

    def fingerprint(self) -> str:
        """A short hash of what a run's rows depend on: the stage ids, group by group, each
        stage's kind, and the input, output and config schemas (the workflow's too). Retry
        policies, timeouts and the code itself are not in it: changing them is compatible
        with runs in flight."""
        plan = [
            [[s.id, s.kind, _schema(s.input), _schema(s.output), _schema(s.config)] for s in g]
            for g in self.groups
        ]
        shape = [self.id, plan, _schema(self.input), _schema(self.output)]
        blob = json.dumps(shape, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def plan(self) -> list[list[str]]:
        """The execution plan: stage ids, group by group."""
        return [[s.id for s in group] for group in self.groups]

    @property
    def stages(self) -> list[Stage]:
        return list(self._stages.values())

    def stage(self, stage_id: str) -> Stage:
        try:
            return self._stages[stage_id]
        except KeyError:
            raise StageNotFoundError(self.id, stage_id) from None

    def group_of(self, stage_id: str) -> int:
        self.stage(stage_id)
        return self._group_of[stage_id]

    def group_output(self, index: int, outputs: Mapping[str, Json]) -> Any:
        """What group `index` hands on, given its stages' outputs by stage id: its one
        stage's output, or a dict keyed by stage id after a parallel group."""
        group = self.groups[index]
        if len(group) == 1:
            return outputs[group[0].id]
        return {s.id: outputs[s.id] for s in group}

    def default_config(self) -> dict[str, Json]:
        """Every stage's config with its defaults filled in (stages without a config model
        are left out)."""
        return self.resolve_config(None)

    def validate_input(self, data: Any) -> Json:
        """The run input, validated and in JSON form.

        Raises:
            InvalidRunInputError: the input does not match the workflow's input model.
        """
        if self.input is None:
            return _to_json(data)
        try:
            model = self.input.model_validate(data)
        except ValidationError as exc:
            raise InvalidRunInputError(self.id, _summary(exc), _errors(exc)) from None
        return model.model_dump(mode="json")

    def resolve_config(self, overrides: Mapping[str, Any] | None) -> dict[str, Json]:
        """Per-stage config, keyed by stage id: defaults overlaid with `overrides`.

        Raises:
            InvalidConfigError: an unknown stage id, config for a stage without a config
                model, or a value that does not validate.
        """
        overrides = dict(overrides or {})
        if not all(isinstance(v, Mapping) for v in overrides.values()):
            raise InvalidConfigError(self.id, "config maps stage ids to objects")
        unknown = sorted(set(overrides) - set(self._stages))
        if unknown:
            raise InvalidConfigError(self.id, f"no stage named {', '.join(unknown)}")
        resolved: dict[str, Json] = {}
        for stage in self._stages.values():
            given = overrides.get(stage.id)
            if stage.config is None:
                if given:
                    raise InvalidConfigError(self.id, f"stage {stage.id!r} takes no config")
                continue
            try:
                resolved[stage.id] = stage.config.model_validate(given or {}).model_dump(
                    mode="json"
                )
            except ValidationError as exc:
                raise InvalidConfigError(
                    self.id, f"stage {stage.id!r}: {_summary(exc)}", _errors(exc)
                ) from None
        return resolved

    def validate_output(self, data: Any) -> Json:
        """The run output, validated against the workflow's output model when it has one."""
        if self.output is None:
            return _to_json(data)
        try:
            return self.output.model_validate(data).model_dump(mode="json")
        except ValidationError as exc:
            raise StageOutputError(
                f"output of workflow {self.id!r} is invalid: {_summary(exc)}", _errors(exc)
            ) from None


class WorkflowBuilder:
    """Build a workflow group by group.

    Example:
        WorkflowBuilder("etl", input=Source).pipe(fetch).parallel([clean, index]).build()
    """

    def __init__(
        self,
        id: str,
        name: str | None = None,
        description: str | None = None,
        *,
        input: type[BaseModel] | None = None,
        output: type[BaseModel] | None = None,
        version: str | None = None,
        timeout: Seconds | None = None,
    ) -> None:
        """`version` pins runs to this plan (letters, digits, `_`, `-`, `.`); by default it
        is a fingerprint of the plan (`Workflow.fingerprint`), so a changed plan is a new
        version by itself. `timeout` (seconds or a timedelta) bounds every run: one still
        unfinished that long after its creation fails with `DeadlineExceededError`."""
        try:
            _check_id(id)
            if version is not None:
                _check_id(version)
        except WorkflowDefinitionError as exc:
            raise WorkflowDefinitionError(f"workflow {exc.message}") from None
        self._timeout = to_seconds(timeout, f"workflow {id!r} timeout")
        self._version = version
        self._id = id
        self._name = name or id
        self._description = description
        self._input = input
        self._output = output
        self._groups: list[tuple[Stage, ...]] = []

    def pipe(self, stage: Stage) -> Self:
        """Add a group of one stage."""
        return self.parallel([stage])

    def parallel(self, stages: Sequence[Stage]) -> Self:
        """Add a group whose stages run concurrently."""
        group = tuple(stages)
        if not group:
            raise WorkflowDefinitionError(f"workflow {self._id!r}: a group needs a stage")
        for stage in group:
            if not isinstance(stage, Stage):
                raise WorkflowDefinitionError(
                    f"workflow {self._id!r}: {stage!r} is not a stage (use define_stage)"
                )
        self._groups.append(group)
        return self

    def build(self) -> Workflow:
        """Check the plan and return the workflow.

        Raises:
            WorkflowDefinitionError: no stages, a duplicate stage id, or a stage that
                requires a stage that does not run before it.
        """
        if not self._groups:
            raise WorkflowDefinitionError(f"workflow {self._id!r} has no stages")
        seen: set[str] = set()
        for group in self._groups:
            ids = [s.id for s in group]
            for stage in group:
                if stage.id in seen or ids.count(stage.id) > 1:
                    raise WorkflowDefinitionError(
                        f"workflow {self._id!r}: stage id {stage.id!r} is used twice"
                    )
            for stage in group:
                missing = [r for r in stage.requires if r not in seen]
                if missing:
                    raise WorkflowDefinitionError(
                        f"workflow {self._id!r}: stage {stage.id!r} requires "
                        f"{', '.join(map(repr, missing))}, which does not run before it"
                    )
            seen.update(ids)
        return Workflow(
            id=self._id,
            name=self._name,
            description=self._description,
            input=self._input,
            output=self._output,
            groups=tuple(self._groups),
            version=self._version,
            timeout=self._timeout,
        )


class WorkflowSource(Protocol):
    """What `create_kernel(registry=...)` needs: `WorkflowRegistry` is one."""

    def get_workflow(self, workflow_id: str, version: str | None = None) -> Workflow:
        """The workflow at `version`, or its newest version when None.

        Raises `WorkflowNotFoundError` (`WorkflowVersionNotFoundError` for a version)."""
        ...

    def known(self) -> list[tuple[str, str]]:
        """Every (workflow id, version) this source has."""
        ...


class WorkflowRegistry:
    """The workflows a kernel knows, by id and version.

    One id may be registered at several versions (keep the old one registered while its runs
    drain, see docs/deploys.md); new runs take the one registered last.
    """

    def __init__(self, workflows: Iterable[Workflow] = ()) -> None:
        self._versions: dict[str, dict[str, Workflow]] = {}
        for workflow in workflows:
            self.register(workflow)

    def register(self, workflow: Workflow) -> None:
        """Raises `WorkflowDefinitionError` for another workflow at a registered version."""
        if not isinstance(workflow, Workflow):
            raise WorkflowDefinitionError(f"{workflow!r} is not a built workflow")
        versions = self._versions.setdefault(workflow.id, {})
        held = versions.get(workflow.version)
        if held is not None and held is not workflow:
            raise WorkflowDefinitionError(
                f"workflow {workflow.id!r} version {workflow.version!r} is registered twice"
            )
        versions.pop(workflow.version, None)
        versions[workflow.version] = workflow  # the last registered is the newest

    def get_workflow(self, workflow_id: str, version: str | None = None) -> Workflow:
        versions = self._versions.get(workflow_id)
        if not versions:
            raise WorkflowNotFoundError(workflow_id, list(self._versions))
        if version is None:
            return next(reversed(versions.values()))
        try:
            return versions[version]
        except KeyError:
            raise WorkflowVersionNotFoundError(workflow_id, version, list(versions)) from None

    def versions(self, workflow_id: str) -> list[str]:
        """The registered versions of `workflow_id`, oldest first."""
        return list(self._versions.get(workflow_id, {}))

    def known(self) -> list[tuple[str, str]]:
        return [(w, v) for w, versions in self._versions.items() for v in versions]

    def __iter__(self) -> Iterator[Workflow]:
        """The newest version of each workflow."""
        return (next(reversed(v.values())) for v in self._versions.values())

    def __len__(self) -> int:
        return len(self._versions)


def _schema(model: type[BaseModel] | None) -> Any:
    return None if model is None else model.model_json_schema()


def _to_json(data: Any) -> Json:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    return data


def _summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
