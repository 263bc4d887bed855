"""The stage contract: what each stage declares once, and the steps every ``run()`` takes.

Each module in ``alignment/stages/`` declares ``SPEC = StageSpec(...)``:

- ``config``: the pydantic class ``run()`` takes, holding exactly what the stage reads. Every field is
  hashed into the artifact key except those ``unhashed`` names (read, but unable to change the output;
  each with its reason). ``refresh_token`` is the salt a forced rerun sets.
- ``templates``: the prompt templates it renders (their versions are hashed), or a function of the
  config for stages that render some only when a setting asks for them.
- ``outputs``: the named files and directories of its artifact; flows and reports find them by name
  (``SPEC.output(result, "responses")``), never by a path written in two places.
- ``curves``, ``progress``: the metrics plotted as training curves and shown in progress lines.
- ``headline``: metrics every result carries (``None`` where not computed, e.g. without held-out
  pairs: start from ``SPEC.not_computed()`` and fill in what was computed). Results cards and reports
  read them; a stage that does not produce one fails at commit, so a renamed metric fails the tests
  instead of leaving a silent gap.

Every ``run()`` has one shape, top to bottom::

    with SPEC.start(config, context) as job:   # `auto` settings resolved, key computed; the job owns the
        inputs = validate(job.config)          # key's lock until the block ends. Typed inputs: bad input
        if job.done():                         # raises before anything loads. done: the store holds the
            return job.result                  # key (after waiting for its lock while another run makes
        with job.writing() as out:             # it), or, for a training stage in several processes, an
            job.commit(out, compute(out, job.config, inputs, job.context))  # `accelerate launch` of this
        return job.result                      # stage made it (rank 0 commits). `writing`: the store's
                                               # temp dir, renamed into place once `commit` has run

Training stages checkpoint into ``job.checkpoints`` (``$ALIGNMENT_HOME/checkpoints/<stage>/<key>/``);
running the same key again resumes there, and the directory goes only once the artifact is committed.

**Resolved before hashing.** ``adapter.mode: auto``, ``dtype: auto`` and ``engine.kind: auto`` are
replaced by what they mean on this machine, and the device kind (cpu, cuda, mps) is part of every key,
so a LoRA artifact made on a CPU and a full fine-tune made on a GPU never share a key. The manifest
records what each `auto` became.
"""

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from alignment import launch
from alignment.artifacts import (
    ArtifactStore,
    StageResult,
    alignment_home,
    artifact_identity,
    code_version,
    stage_key,
    write_manifest,
)
from alignment.config import (
    AdapterMode,
    AdapterSpec,
    ArtifactRef,
    ConstitutionSpec,
    DataSpec,
    EngineKind,
    EngineSpec,
    LaunchSpec,
    ModelSpec,
    StageConfig,
    TrainingOptions,
)
from alignment.training import SCRATCH, Progress


@dataclass
class RunContext:
    """Where a stage runs: ids for lineage and an optional progress hook (the Prefect task sets both)."""

    run: dict[str, Any] = field(default_factory=dict)
    progress: Progress | None = None
    store: ArtifactStore | None = None
    log: Callable[[str], None] = print  # where a launched stage's log lines go (the Prefect task: its logger)
    plan: "Plan | None" = None  # the step as the chain worked it out (``StageSpec.plan``): not done again


class ContractError(RuntimeError):
    """A stage broke its own declaration (a missing output or headline metric): a bug, not bad input."""


@lru_cache(maxsize=1)
def device_kind() -> str:
    """`cuda`, `mps` or `cpu`: part of every key (numerics and resolved `auto` settings differ by device)."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_auto(value: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """`value` with every `auto` that depends on the machine replaced by what it means here, and a map of
    what was resolved (dotted path → value), for the manifest."""
    if isinstance(value, BaseModel):
        update: dict[str, Any] = {}
        resolved: dict[str, str] = {}
        for name in type(value).model_fields:
            new, inner = resolve_auto(getattr(value, name), f"{path}{name}.")
            if new is not getattr(value, name):
                update[name] = new
            resolved.update(inner)
        own = _resolve_own(value)
        for name, new in own.items():
            update[name] = new
            resolved[f"{path}{name}"] = str(getattr(new, "value", new))
        return (value.model_copy(update=update) if update else value), resolved
    if isinstance(value, dict):
        pairs = {k: resolve_auto(v, f"{path}{k}.") for k, v in value.items()}
        changed = any(new is not value[k] for k, (new, _) in pairs.items())
        merged = {k2: v2 for _, inner in pairs.values() for k2, v2 in inner.items()}
        return ({k: new for k, (new, _) in pairs.items()} if changed else value), merged
    return value, {}


def _resolve_own(value: BaseModel) -> dict[str, Any]:
    """The `auto` fields of one spec, resolved (nested specs are handled by the caller)."""
    if isinstance(value, AdapterSpec) and value.mode is AdapterMode.auto:
        from alignment.models import effective_mode

        return {"mode": effective_mode(value)}
    if isinstance(value, ModelSpec) and value.dtype == "auto":
        from alignment.models import torch_dtype

        return {"dtype": str(torch_dtype(value)).removeprefix("torch.")}
    if isinstance(value, EngineSpec) and value.kind is EngineKind.auto:
        from alignment.generation import resolve_kind

        return {"kind": resolve_kind(value)}
    return {}


def hashed_value(value: Any) -> Any:
    """A config value as its key sees it: data files by content hash, models and artifacts by id,
    constitutions by content hash, recursively."""
    if isinstance(value, DataSpec):
        from alignment.data import data_identity

        return data_identity(value)
    if isinstance(value, ConstitutionSpec):
        from alignment.constitution import load_constitution

        return {"constitution_hash": load_constitution(value.path).hash}
    if isinstance(value, ModelSpec):
        from alignment.models import model_identity

        return model_identity(value)
    if isinstance(value, ArtifactRef):
        return {"artifact": artifact_identity(value.path)}
    if isinstance(value, BaseModel):
        return {name: hashed_value(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {k: hashed_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hashed_value(v) for v in value]
    return value.value if hasattr(value, "value") else value


def lineage(value: Any, path: str = "") -> dict[str, Any]:
    """Human-readable inputs for the manifest: each model, data file, artifact and constitution a config
    names (dotted path → its name and identity)."""
    if isinstance(value, ModelSpec | DataSpec | ArtifactRef | ConstitutionSpec):
        name = value.name if isinstance(value, ModelSpec) else value.path
        ident = hashed_value(value)
        return {path.rstrip("."): {"name": name, **(ident if isinstance(ident, dict) else {"id": ident})}}
    out: dict[str, Any] = {}
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            out.update(lineage(getattr(value, name), f"{path}{name}."))
    elif isinstance(value, dict):
        for k, v in value.items():
            out.update(lineage(v, f"{path}{k}."))
    return out


def launch_of(config: StageConfig) -> "LaunchSpec | None | Literal[False]":
    """A training stage's `options.launch` (None: one process); False for a stage that never launches."""
    options = getattr(config, "options", None)
    return options.launch if isinstance(options, TrainingOptions) else False


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p) if isinstance(tree, dict) else None
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


@dataclass(frozen=True)
class StageSpec:
    """One stage's contract (see the module docstring)."""

    name: str
    config: type[StageConfig]
    outputs: dict[str, str]
    optional_outputs: tuple[str, ...] = ()  # outputs that only some settings write (e.g. `adapter`)
    templates: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    curves: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()
    progress: tuple[str, ...] = ()
    unhashed: dict[str, str] = field(default_factory=dict)  # dotted config path → why it cannot change the output
    libraries: tuple[str, ...] = ()  # distributions whose installed version is part of the key (e.g. lm_eval)
    card: Callable[[dict[str, Any]], list[str]] | None = None  # lines the run's results card shows for a result

    def not_computed(self) -> dict[str, None]:
        """Every headline metric, None until computed (a result carries all of them: see ``headline``)."""
        return dict.fromkeys(self.headline)

    def templates_for(self, config: StageConfig) -> tuple[str, ...]:
        return self.templates(config) if callable(self.templates) else self.templates

    def identity(self, config: StageConfig) -> dict[str, Any]:
        """What determines the output: the config as hashed (minus `unhashed`), template versions, the
        device kind and the code version. `config` must already be resolved (``start`` does it)."""
        from alignment.prompts import template_version

        hashed = hashed_value(config)
        for dotted in self.unhashed:
            _drop(hashed, dotted)
        out = {"config": hashed, "templates": {t: template_version(t) for t in self.templates_for(config)},
               "device": device_kind(), "code_version": code_version()}
        if self.libraries:
            from importlib.metadata import PackageNotFoundError, version

            def installed(name: str) -> str | None:
                try:
                    return version(name)
                except PackageNotFoundError:
                    return None

            out["libraries"] = {name: installed(name) for name in self.libraries}
        if (spec := launch_of(config)) is not False:  # what of the launch changes the result (alignment.launch)
            out["launch"] = launch.plan(spec).identity()
        return out

    def plan(self, config: StageConfig) -> "Plan":
        """The step worked out once: `auto` settings resolved, the identity (data files hashed) and the
        artifact key, which is also the Prefect cache key. The chain plans each step and hands the plan to
        the task and the stage (``RunContext.plan``), so nothing is hashed twice."""
        if not isinstance(config, self.config):
            raise TypeError(f"stage {self.name} takes a {self.config.__name__}, got {type(config).__name__}")
        resolved, what = resolve_auto(config)
        ident = self.identity(resolved)
        return Plan(self, config, resolved, what, ident, stage_key(self.name, ident))

    def key(self, config: StageConfig) -> str:
        """The artifact key (and Prefect cache key) of `config`, with `auto` settings resolved first."""
        return self.plan(config).key

    def start(self, config: StageConfig, context: RunContext | None = None) -> "Job":
        context = context or RunContext()
        given = context.plan
        step = given if given is not None and given.stage is self and given.config == config else self.plan(config)
        what = step.what
        if launch.is_child():  # the parent resolved `auto` before freezing the config: keep its record
            what = {**json.loads(os.environ.get(launch.RESOLVED, "{}")), **what}
        resolved = step.resolved
        plan = launch.plan(spec) if (spec := launch_of(resolved)) is not False else launch.LaunchPlan()
        return Job(self, resolved, context, step.identity, step.key, what, plan)

    def output(self, result: StageResult | dict[str, Any], name: str) -> Path:
        """Where output `name` of a finished artifact is (a result object or its dict form)."""
        base = result.path if isinstance(result, StageResult) else result["path"]
        return Path(base) / self.outputs[name]


@dataclass(frozen=True)
class Plan:
    """One step, worked out: its stage, its config as given and with `auto` resolved (and what each `auto`
    became), its identity and its key."""

    stage: StageSpec
    config: StageConfig
    resolved: StageConfig
    what: dict[str, str]
    identity: dict[str, Any]
    key: str


@dataclass
class Job:
    """One run of a stage: the resolved config, its key, its launch, and the store steps of ``run()``."""

    spec: StageSpec
    config: Any
    context: RunContext
    identity: dict[str, Any]
    key: str
    resolved: dict[str, str]
    launch: launch.LaunchPlan
    started: float = field(default_factory=time.time)
    result: StageResult | None = None
    _lock: Any = field(default=None, repr=False)

    @property
    def store(self) -> ArtifactStore:
        return self.context.store or ArtifactStore()

    @property
    def checkpoints(self) -> Path:
        """Where a training stage checkpoints (and resumes from) for this key."""
        return alignment_home() / "checkpoints" / self.spec.name / self.key

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()  # the key's lock goes with the block, however it ends

    def done(self) -> bool:
        """True when there is nothing left to compute here, with ``result`` set: the store holds this key
        (``stored``: after taking the key's lock), or the stage trains in several processes and this
        process launched them (``run_launched``)."""
        if (stored := self.stored()) is not None:
            self.result = stored
            return True
        if self.launched():
            self.run_launched()
            return True
        return False

    def stored(self) -> StageResult | None:
        """The finished artifact of this key, if the store has it. Takes the key's lock first (a rank of a
        launch does not: its parent holds it), so a run of the same key in progress elsewhere is waited for."""
        # machines other than the first of a multi-machine launch join it: they take no lock
        if self._lock is None and not launch.is_child() and self.launch.machine_rank == 0:
            self._lock = self.store.lock(self.spec.name, self.key)
        problem = self.store.problem(self.spec.name, self.key)
        if problem is None:
            self._release()
            return self.store.load(self.spec.name, self.key)
        if problem != "missing" and not launch.is_child():
            where = self.store.set_aside(self.spec.name, self.key, problem)
            self.context.log(f"{self.spec.name}/{self.key}: damaged artifact ({problem}); moved to {where}; rebuilding")
        return None

    def launched(self) -> bool:
        """True when the stage must train in several processes and this process is to launch them."""
        return self.launch.multi_process and not launch.is_child()

    def run_launched(self) -> StageResult:
        """`accelerate launch` this stage with the resolved config; rank 0 commits the artifact."""
        frozen = self.checkpoints.with_name(f"{self.key}.config.json")
        frozen.parent.mkdir(parents=True, exist_ok=True)
        frozen.write_text(self.config.model_dump_json())
        try:
            launch.run(self.launch, self.spec.name, frozen, self.context.run, self.resolved, self.context.log,
                       self.context.progress)
            deadline = time.time() + (600 if self.launch.machine_rank else 0)  # machine 0's rank 0 commits
            while not self.store.complete(self.spec.name, self.key) and time.time() < deadline:
                time.sleep(2)
            if not self.store.complete(self.spec.name, self.key):
                raise ContractError(f"stage {self.spec.name}: the launch exited cleanly but wrote no artifact")
            if self.launch.machine_rank == 0:
                self._done()
            self.result = dataclasses.replace(self.store.load(self.spec.name, self.key), reused=False)
            return self.result
        finally:
            frozen.unlink(missing_ok=True)
            self._release()

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """A private temp dir in the store, renamed to the artifact's place once ``commit`` has run. Ranks
        other than 0 of a launch get a scratch dir that is thrown away: rank 0 alone writes the artifact."""
        try:
            if launch.is_child() and not launch.is_main():
                with tempfile.TemporaryDirectory(prefix=f"{self.spec.name}-rank{launch.rank()}-") as tmp:
                    yield Path(tmp)
                return
            with self.store.writer(self.spec.name, self.key) as tmp:
                yield tmp
            if not launch.is_child():
                self._done()
        finally:
            self._release()

    def commit(self, out: Path, metrics: dict[str, Any]) -> None:
        """Check the outputs and headline metrics the spec declares, then write config.json and the manifest."""
        if launch.is_child() and not launch.is_main():
            return
        shutil.rmtree(out / SCRATCH, ignore_errors=True)
        missing = [f"{n} ({p})" for n, p in self.spec.outputs.items()
                   if n not in self.spec.optional_outputs and not (out / p).exists()]
        absent = [k for k in self.spec.headline if k not in metrics]
        if missing or absent:
            raise ContractError(f"stage {self.spec.name} broke its SPEC: missing outputs {missing}, missing "
                                f"headline metrics {absent} (use None for a metric not computed)")
        seen = launch.observed() if self.launch.multi_process else None
        if seen is not None and seen["num_processes"] != self.launch.num_processes:
            raise ContractError(f"stage {self.spec.name}: launched {self.launch.num_processes} processes but "
                                f"training ran as {seen}; on a CPU the trainer needs use_cpu=True (alignment.training)")
        trains = launch_of(self.config) is not False
        (out / "config.json").write_text(self.config.model_dump_json(indent=2))
        write_manifest(out, stage=self.spec.name, key=self.key, identity=self.identity,
                       inputs=lineage(self.config), metrics=metrics, started=self.started,
                       run_context=self.context.run, resolved=self.resolved,
                       launch=launch.as_manifest(self.launch, seen) if trains else None)
        self.result = StageResult(stage=self.spec.name, key=self.key,
                                  path=str(self.store.path(self.spec.name, self.key)), metrics=metrics)

    def _done(self) -> None:
        """The artifact is committed: its checkpoints can go."""
        shutil.rmtree(self.checkpoints, ignore_errors=True)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def cli(spec: StageSpec, run: Callable[..., StageResult | None]) -> None:
    """``python -m alignment.stages.<stage> --config x.yaml``: run one stage alone, print its result. A rank
    of a launch enters here too: it watches its parent and reports progress on stdout (rank 0)."""
    from alignment.config.loader import load_yaml_model

    p = argparse.ArgumentParser(prog=f"python -m alignment.stages.{spec.name}", description=f"Run the {spec.name} stage.")
    p.add_argument("--config", required=True, help=f"YAML file holding a {spec.config.__name__}")
    args = p.parse_args()
    context = RunContext()
    if launch.is_child():
        launch.watch_parent()
        context = RunContext(run=json.loads(os.environ.get(launch.RUN_CONTEXT, "{}")), progress=launch.child_progress())
    result = run(load_yaml_model(Path(args.config), spec.config), context)
    if result is not None and launch.is_main():
        print(json.dumps(result.to_dict(), indent=2, default=str))
