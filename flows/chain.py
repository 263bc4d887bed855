"""The chain a flow runs its steps through: the opening, each step, and the ending, written once.

    chain, recipe = Chain.open(FLOW, recipe, refresh, overrides)   # overrides → policy → checks → gates
    model = model_from(chain.run("sft", config), recipe.model)      # one cached stage task per step
    return chain.close(recipe, model)                               # reports → gates → approval → promote

``open``: dotted overrides are validated by the flow's recipe model; the run's parameters are judged by
the run hooks (``RunHooks.check_parameters``: the service's deployment policy, which compares them with
the served recipe); then every input is checked before any model loads (``FlowSpec.check``: the flow's
preflight, the gates' steps, model paths and launch configs). ``run``: before each stage the hooks say
whether the server still answers (the chain stops with ``ServerLost`` rather than start work it could
not report), the stage and its key are worked out once (``alignment.stages.plan``) and the task is
``Cached`` exactly when the store holds that key; after it, the recipe's gates on that step are checked
(a failed one ends the run ``Failed``). ``close``: the UI reports, then the release (``flows.release``).

What the chain needs from the server lifecycle comes through ``RunHooks``, so the flows never import the
service package (``flows.service``): it installs its hooks through the ``alignment.run_hooks`` entry
point. Without hooks (a library user calling a flow function with no server of ours) there is nothing
to register with or check, except that a run started from a deployment is refused: its parameters came
through an API and nothing would judge them.
"""

import functools
from importlib.metadata import entry_points
from typing import Any

from prefect import get_run_logger

from alignment.artifacts import ArtifactStore
from alignment.config.loader import validate_model
from alignment.gates import GateCheck, GateFailed
from alignment.stages import plan
from flows.spec import Configs, FlowSpec
from flows.tasks import planned, stage_task


class ServerLost(RuntimeError):
    """The Prefect server stopped answering mid-run: the run stops before its next stage."""


class RunHooks:
    """What a run needs from whoever started the server (the defaults: no server of ours)."""

    def check_parameters(self, recipe: Any) -> None:
        """Judge a run's parameters; the default refuses deployment runs (nothing would judge them)."""
        from prefect.runtime import deployment

        if deployment.id is not None:
            raise PermissionError("this run came from a deployment, and no run hooks are installed to check its "
                                  "parameters against what was served (the alignment.run_hooks entry point: "
                                  "reinstall the project, `bash scripts/setup.sh`)")

    def register(self, flow_run_id: Any) -> None:
        """Note the run's process, so a run orphaned by a server restart can be marked Crashed."""

    def reachable(self) -> Exception | None:
        """None while the server answers and is ours; the problem otherwise."""
        return None


_installed: list[RunHooks] = []


def install(hooks: RunHooks) -> None:
    """Use `hooks` in this process (the service does it; tests may)."""
    _installed[:] = [hooks]


def hooks() -> RunHooks:
    if not _installed:
        found = [ep.load() for ep in entry_points(group="alignment.run_hooks")]
        install(found[0]() if found else RunHooks())
    return _installed[0]


def gated(fn):
    """Under ``@flow``: a failed gate ends the run ``Failed`` with the gate's message, as an outcome of
    the run rather than a crash (no traceback in the run's log)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GateFailed as e:
            from prefect.states import Failed

            get_run_logger().error("%s", e)
            return Failed(message=str(e))
    return run


class Chain:
    """Runs a flow's stage tasks in order, keeping each one's result and final state by label. A label
    in `refresh` gets a salted config (new artifact key) and skips the cache lookup."""

    def __init__(self, spec: FlowSpec, refresh: list[str], gates: GateCheck, configs: Configs):
        from prefect.runtime import flow_run

        self.spec, self.flow, self.refresh, self.gates = spec, spec.name, refresh, gates
        self.configs = configs  # the flow's typed builder of this run's stage configs (FlowSpec.configs)
        self.results: dict[str, dict[str, Any]] = {}
        self.states: dict[str, str] = {}
        hooks().register(flow_run.id)

    @classmethod
    def open(cls, spec: FlowSpec, recipe: Any, refresh: list[str] | None = None,
             overrides: dict[str, Any] | None = None) -> tuple["Chain", Any]:
        """The recipe as this run sees it (overrides applied, parameters judged, every input checked) and
        its chain, which holds the run's config builder (``chain.configs``, made once); nothing has run yet."""
        if overrides:
            if "flow" in overrides:
                raise ValueError(f"overrides: flow = {overrides['flow']!r}: a run cannot change which flow it is")
            recipe = validate_model(recipe.model_dump(mode="json"), spec.recipe, "overrides", overrides=overrides)
        hooks().check_parameters(recipe)  # parameters from an API are untrusted
        configs = spec.configs(recipe)
        spec.check(recipe, configs)
        gates = GateCheck(list(recipe.gates))
        return cls(spec, spec.refresh_labels(recipe, refresh), gates, configs), recipe

    def _check_server(self, label: str) -> None:
        if (err := hooks().reachable()) is not None:
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
        forced = (same_as or label) in self.refresh
        config = config.model_copy(update={"refresh_token": f"refresh:{flow_run.id}" if forced else None})
        step = plan(config)  # the stage and its key, worked out once for the lookup, the task and the stage
        missing = not ArtifactStore().complete(step.stage.name, step.key)  # deleted, or never made
        task = stage_task(step.stage, refresh=(forced and same_as is None) or missing, label=label)
        with planned(step):
            state = task(config, step.key, return_state=True)
        self.results[label], self.states[label] = state.result(), state.name
        get_run_logger().info("%s: %s (artifact %s)", label, state.name, self.results[label]["key"])
        if self.gates.after(label, self.results[label]["metrics"]):
            self.stop_at_gate()
        return self.results[label]

    def stop_at_gate(self) -> None:
        from flows import reports

        reports.publish_stages(self.results, self.states)  # the steps that ran stay inspectable
        reports.publish_gates(self.flow, self.gates)
        raise GateFailed(f"gate failed, the flow stops: {'; '.join(self.gates.failures())}. The gate report is the "
                         f"run's `{self.flow}-gates` artifact; committed steps are reused on the next run")

    def summary(self) -> dict[str, dict[str, str]]:
        return {k: {"status": self.states[k], "key": r["key"], "path": r["path"]} for k, r in self.results.items()}

    def close(self, recipe: Any, final: Any, nothing_new: str | None = None, **extra: Any) -> dict[str, Any]:
        """The ending every flow shares: the UI reports (results card, responses, step summaries), then the
        release of the `final` model (every gate passed, approval if asked, `promote`), or, when the run made
        `nothing_new` worth releasing (why), gates checked and nothing promoted."""
        from flows import release, reports

        headline = reports.publish(self.flow, self.results, self.states)
        outcome = (release.no_release(self, nothing_new) if nothing_new
                   else release.release(self, recipe, final, headline))
        return {"stages": self.summary(), "metrics": headline, "release": outcome, **extra}
