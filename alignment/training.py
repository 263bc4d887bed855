"""What the stages that train with a TRL trainer share: the trainer settings, the metrics callback that
keeps the training curves, and writing/reading ``curves.jsonl``."""

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignment.config import TrainSpec

Progress = Callable[[float, dict[str, Any]], None]  # (fraction done, latest metrics) → None
SCRATCH = "checkpoints"  # trainers' scratch directory inside a stage's temp dir; never part of an artifact


def trainer_kwargs(train: TrainSpec, out: Path, n_rows: int) -> dict[str, Any]:
    """TrainingArguments shared by TRL's config classes; checkpoints stay inside the temp dir."""
    import torch

    steps_per_epoch = math.ceil(n_rows / (train.batch_size * train.grad_accum))
    total = train.max_steps if train.max_steps > 0 else math.ceil(steps_per_epoch * train.epochs)
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {
        "output_dir": str(out / SCRATCH),
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
