"""What every stage shares: its identity (the artifact key), the run skeleton, trainer settings, metrics.

A stage's ``run(config)`` reads: validate inputs (cheap, before any model is loaded) → return the stored
artifact if the store already has this key → load, train or generate into a temp dir → write the
manifest → rename into place.
"""

import argparse
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignment.artifacts import ArtifactStore, StageResult, code_version, stage_key, write_manifest
from alignment.config import ConstitutionSpec, DataSpec, ModelSpec, StageInput, TrainSpec
from alignment.data import data_identity
from alignment.models import model_identity

Progress = Callable[[float, dict[str, Any]], None]


@dataclass
class RunContext:
    """Where a stage runs: ids for lineage and an optional progress hook (the Prefect task sets both)."""

    run: dict[str, Any] = field(default_factory=dict)
    progress: Progress | None = None
    store: ArtifactStore | None = None


def _resolved(value: Any) -> Any:
    """A config value with data files replaced by content hashes and models by their ids, recursively."""
    if isinstance(value, DataSpec):
        return data_identity(value)
    if isinstance(value, ConstitutionSpec):
        from alignment.constitution import load_constitution

        return {"constitution_hash": load_constitution(value.path).hash}
    if isinstance(value, ModelSpec):
        return model_identity(value)
    if isinstance(value, BaseModel):
        return {name: _resolved(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, list):
        return [_resolved(v) for v in value]
    return value.value if hasattr(value, "value") else value


# The prompt templates each stage renders: their versions are part of its key, so editing a template
# reruns exactly the stages that use it.
PROMPTS_USED = {"evaluate": ("judge_pairwise.jinja", "judge_choice.jinja"),
                "critique_revise": ("cai_critique.jinja", "cai_revision.jinja"),
                "feedback": ("judge_choice.jinja",),
                # the RL stages render it when reward.judge is set
                "ppo": ("judge_choice.jinja",), "grpo": ("judge_choice.jinja",), "rloo": ("judge_choice.jinja",)}


def identity(stage: str, config: BaseModel) -> dict[str, Any]:
    """What determines a stage's output: its resolved config, its prompt templates and the code version."""
    from alignment.prompts import template_version

    prompts = {name: template_version(name) for name in PROMPTS_USED.get(stage, ())}
    return {"stage": stage, "config": _resolved(config), "prompts": prompts, "code_version": code_version()}


def artifact_key(stage: str, config: BaseModel) -> str:
    return stage_key(stage, identity(stage, config))


def inputs_of(config: StageInput) -> dict[str, Any]:
    """Human-readable lineage for the manifest: each input with its hash or artifact id."""
    out: dict[str, Any] = {"model": {"name": config.model.name, **model_identity(config.model)}}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, DataSpec):
            out[name] = {"path": value.path, **data_identity(value)}
    return out


def run_stage(stage: str, config: StageInput, validate: Callable[[], Any],
              body: Callable[[Path, Any, RunContext], dict[str, Any]], context: RunContext | None) -> StageResult:
    """The common skeleton: validate → reuse → compute into a temp dir → manifest → rename."""
    context = context or RunContext()
    store = context.store or ArtifactStore()
    checked = validate()  # raises on bad input before anything is loaded or written
    ident = identity(stage, config)
    key = stage_key(stage, ident)
    if store.complete(stage, key):
        return store.load(stage, key)
    started = time.time()
    with store.writer(stage, key) as tmp:
        metrics = body(tmp, checked, context)
        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)  # trainer scratch, not part of the artifact
        (tmp / "config.json").write_text(config.model_dump_json(indent=2))
        write_manifest(tmp, stage=stage, key=key, identity=ident, inputs=inputs_of(config), metrics=metrics,
                       started=started, run_context=context.run)
    return StageResult(stage=stage, key=key, path=str(store.path(stage, key)), metrics=metrics)


def trainer_kwargs(train: TrainSpec, out: Path, n_rows: int) -> dict[str, Any]:
    """TrainingArguments shared by TRL's config classes; checkpoints stay inside the temp dir."""
    import torch

    steps_per_epoch = math.ceil(n_rows / (train.batch_size * train.grad_accum))
    total = train.max_steps if train.max_steps > 0 else math.ceil(steps_per_epoch * train.epochs)
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {
        "output_dir": str(out / "checkpoints"),
        "learning_rate": train.learning_rate,
        "num_train_epochs": train.epochs,
        "max_steps": train.max_steps,
        "per_device_train_batch_size": train.batch_size,
        "per_device_eval_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "max_length": train.max_length,
        "warmup_steps": round(train.warmup_ratio * total),
        "weight_decay": train.weight_decay,
        "lr_scheduler_type": train.lr_scheduler,
        "logging_steps": train.logging_steps,
        "logging_first_step": True,
        "seed": train.seed,
        "data_seed": train.seed,
        "gradient_checkpointing": train.gradient_checkpointing,
        "bf16": bf16,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def metrics_callback(history: list[dict[str, Any]], progress: Progress | None):
    """A TrainerCallback that keeps every logged row (the training curves) and reports progress."""
    from transformers import TrainerCallback

    class _Metrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                history.append({"step": state.global_step, **{k: v for k, v in logs.items()
                                                               if isinstance(v, int | float)}})

        def on_step_end(self, args, state, control, **kwargs):
            if progress and state.max_steps:
                progress(state.global_step / state.max_steps, history[-1] if history else {})

    return _Metrics()


def write_curves(out: Path, history: list[dict[str, Any]]) -> None:
    with open(out / "curves.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def read_curves(artifact_path: str | Path) -> list[dict[str, Any]]:
    path = Path(artifact_path) / "curves.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli(config_cls: type[BaseModel], run: Callable[[Any], StageResult], stage: str) -> None:
    """``python -m alignment.stages.<stage> --config x.yaml``: run one stage alone, print its result."""
    from alignment.recipes import load_yaml_model

    p = argparse.ArgumentParser(prog=f"python -m alignment.stages.{stage}", description=f"Run the {stage} stage.")
    p.add_argument("--config", required=True, help=f"YAML file holding a {config_cls.__name__}")
    args = p.parse_args()
    result = run(load_yaml_model(Path(args.config), config_cls))
    print(json.dumps(result.to_dict(), indent=2, default=str))
