"""Stages as Prefect tasks, cached on the stage's artifact key.

The cache key is the artifact key the chain planned once per step (``alignment.stages.plan``: what the stage reads, data hashes, upstream
artifact ids, template versions, device, code version, refresh salt), so a task is ``Cached`` exactly
when the store already holds what it would compute. Results are small dicts (paths and metrics),
persisted as JSON in Prefect's local result storage (``PREFECT_LOCAL_STORAGE_PATH``, which
``flows.service.server.apply_defaults`` puts under ``$ALIGNMENT_HOME``). When the store no longer holds an
artifact (deleted by hand), the chain runs its task with ``refresh_cache`` so the stage rebuilds it
instead of a stale cached result pointing at a missing directory.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context

from alignment.stages import Plan, RunContext, StageSpec, runner, spec, spec_for

_PLANS: dict[str, Plan] = {}  # key → the chain's plan of the step now running (handed to the stage once)


@contextmanager
def planned(step: Plan) -> Iterator[None]:
    """While the chain runs this step's task, the task's stage takes the chain's plan instead of working
    the key out again; gone afterwards (a later run of the key plans afresh: its data may have changed)."""
    _PLANS[step.key] = step
    try:
        yield
    finally:
        _PLANS.pop(step.key, None)


def stage_cache_key(ctx, params: dict[str, Any]) -> str:
    """``<stage>-<artifact key>``: the key the chain planned (the store is consulted by ``Chain.run``)."""
    return f"{spec_for(params['config']).name}-{params['key']}"


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


def _run_stage(config, key: str) -> dict[str, Any]:
    ctx = get_run_context()
    stage, label = spec(ctx.task.name), ctx.task_run.name
    run = {"flow_run_id": str(ctx.task_run.flow_run_id), "task_run_id": str(ctx.task_run.id)}
    logger = get_run_logger()
    result = runner(stage.name)(config, RunContext(run=run, progress=_progress_hook(stage, label), plan=_PLANS.get(key),
                                                   log=lambda line: logger.info("%s", line)))
    logger.info("%s: %s artifact %s at %s", label, "reused" if result.reused else "wrote", result.key, result.path)
    return result.to_dict()


def stage_task(stage: StageSpec, refresh: bool = False, label: str | None = None):
    """The Prefect task for `stage` (shown as `label` when a flow runs a stage twice), called with the
    config and its planned key (``Chain.run``); `refresh=True` skips the cache lookup."""
    return task(
        _run_stage, name=stage.name, task_run_name=label or stage.name, cache_key_fn=stage_cache_key,
        persist_result=True, result_serializer="json", refresh_cache=refresh,
        description=f"The {stage.name} stage (alignment.stages.{stage.name}.run), cached on its artifact key.",
    )


def data_of(result: dict[str, Any], stage: str, output: str):
    """A stage result's named output file as data for the next step."""
    from alignment.config import DataSpec

    return DataSpec(path=str(spec(stage).output(result, output)))
