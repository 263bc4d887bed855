"""Stages as Prefect tasks, cached on the stage's artifact key.

The cache key is the artifact key (``SPEC.key(config)``: what the stage reads, data hashes, upstream
artifact ids, template versions, device, code version, refresh salt), so a task is ``Cached`` exactly
when the store already holds what it would compute. Results are small dicts (paths and metrics),
persisted as JSON in Prefect's local result storage (``PREFECT_LOCAL_STORAGE_PATH``, which
``flows.server.apply_defaults`` puts under ``$ALIGNMENT_HOME``). When the store no longer holds an
artifact (deleted by hand), the chain runs its task with ``refresh_cache`` so the stage rebuilds it
instead of a stale cached result pointing at a missing directory.
"""

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context

from alignment.artifacts import ArtifactStore
from alignment.stages import RunContext, StageSpec, runner, spec, spec_for
from flows.server import reachable


def stage_cache_key(ctx, params: dict[str, Any]) -> str:
    """``<stage>-<artifact key>``: pure (the store is consulted by ``Chain.run``, not here)."""
    stage = spec_for(params["config"])
    return f"{stage.name}-{stage.key(params['config'])}"


def _progress_hook(stage: StageSpec, label: str):
    """Create a progress artifact for `label` and return a throttled updater (at most one call a second).

    Progress is for the UI and is best effort: when the server cannot take it (gone, restarting), the
    stage goes on and commits its work (one warning), and the chain stops before the next stage
    (`Chain._check_server`, which also checked the server just before this stage)."""
    logger = get_run_logger()
    broken: list[Exception] = []

    def report(call, **kwargs):
        if broken:
            return None
        try:
            return call(**kwargs)
        except Exception as e:  # noqa: BLE001 - httpx/Prefect errors of an unreachable API
            broken.append(e)
            logger.warning("%s: progress not reported to the Prefect server (%s); the stage goes on", label, e)
            return None

    artifact_id = report(create_progress_artifact, progress=0.0, key=f"{label.replace('_', '-')}-progress",
                         description=f"{label}: progress")
    last = [0.0]

    def update(fraction: float, metrics: dict[str, Any]) -> None:
        now = time.time()
        if now - last[0] < 1.0 and fraction < 1.0:
            return
        last[0] = now
        if artifact_id is not None:
            report(update_progress_artifact, artifact_id=artifact_id, progress=round(100 * fraction, 1))
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in stage.progress)
        logger.info("%s: %.0f%% %s", label, 100 * fraction, shown)

    return update


def _run_stage(config) -> dict[str, Any]:
    ctx = get_run_context()
    stage, label = spec(ctx.task.name), ctx.task_run.name
    run = {"flow_run_id": str(ctx.task_run.flow_run_id), "task_run_id": str(ctx.task_run.id)}
    logger = get_run_logger()
    result = runner(stage.name)(config, RunContext(run=run, progress=_progress_hook(stage, label),
                                                   log=lambda line: logger.info("%s", line)))
    logger.info("%s: %s artifact %s at %s", label, "reused" if result.reused else "wrote", result.key, result.path)
    return result.to_dict()


def stage_task(stage: StageSpec, refresh: bool = False, label: str | None = None):
    """The Prefect task for `stage` (shown as `label` when a flow runs a stage twice); `refresh=True`
    skips the cache lookup."""
    return task(
        _run_stage, name=stage.name, task_run_name=label or stage.name, cache_key_fn=stage_cache_key,
        persist_result=True, result_serializer="json", refresh_cache=refresh,
        description=f"The {stage.name} stage (alignment.stages.{stage.name}.run), cached on its artifact key.",
    )


class ServerLost(RuntimeError):
    """The Prefect server stopped answering mid-run: the run stops before its next stage."""


class Chain:
    """Runs a flow's stage tasks in order, keeping each one's result and final state by label. A label
    in `refresh` gets a salted config (new artifact key) and skips the cache lookup. After each step, the
    recipe's gates on it are checked (`flows.gates`): a failed one stops the flow.

    The run registers its process (`flows.server.register_flow_run`), so that if the server dies, the run
    is marked Crashed when it comes back; before each stage the chain checks that the server still
    answers, and stops with `ServerLost` (naming what is committed) rather than start work it could not
    report."""

    def __init__(self, refresh: list[str], gates: list | None = None):
        from prefect.runtime import flow_run

        from flows.gates import Gates
        from flows.server import register_flow_run

        self.refresh = refresh
        self.flow = flow_run.flow_name
        self.gates = Gates(list(gates or []))  # checked after each step (`flows.gates`)
        self.results: dict[str, dict[str, Any]] = {}
        self.states: dict[str, str] = {}
        register_flow_run(flow_run.id)

    def _check_server(self, label: str) -> None:
        if (err := reachable()) is not None:
            done = ", ".join(self.results) or "none"
            raise ServerLost(f"the Prefect server stopped answering, or its port is not our server any more, before "
                             f"{label} ({err}); stages committed "
                             f"in the store so far: {done}. Start it again (`alignment serve`, or any `alignment "
                             "run`) and rerun: committed stages are reused, and this run shows as Crashed")

    def run(self, label: str, config, same_as: str | None = None) -> dict[str, Any]:
        """Run (or reuse) the stage `config` belongs to, shown as `label`. `same_as`: the label of a step
        this run already ran with the same config; shown again as `label`, it takes that step's refresh
        salt, so it is that step's artifact (``Cached``) even when that step was refreshed."""
        from prefect.runtime import flow_run

        self._check_server(label)
        stage = spec_for(config)
        forced = (same_as or label) in self.refresh
        config = config.model_copy(update={"refresh_token": f"refresh:{flow_run.id}" if forced else None})
        missing = not ArtifactStore().complete(stage.name, stage.key(config))  # deleted, or never made
        state = stage_task(stage, refresh=(forced and same_as is None) or missing, label=label)(config, return_state=True)
        self.results[label], self.states[label] = state.result(), state.name
        get_run_logger().info("%s: %s (artifact %s)", label, state.name, self.results[label]["key"])
        self.gates.after(label, self.results[label], self)
        return self.results[label]

    def summary(self) -> dict[str, dict[str, str]]:
        return {k: {"status": self.states[k], "key": r["key"], "path": r["path"]} for k, r in self.results.items()}


def data_of(result: dict[str, Any], stage: str, output: str):
    """A stage result's named output file as data for the next step."""
    from alignment.config import DataSpec

    return DataSpec(path=str(spec(stage).output(result, output)))


def options(section, recipe) -> dict[str, Any]:
    """A recipe section's fields for its stage config; an unset `launch` inherits the recipe's."""
    fields = dict(section)
    if "launch" in fields and fields["launch"] is None:
        fields["launch"] = recipe.launch
    return fields
