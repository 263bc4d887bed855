"""What the stages that train with a TRL trainer share: the trainer settings (checkpoints, trackers, one
process or several), resuming from the newest checkpoint that loads, saving the trained model from any
number of processes, the progress callback, and writing/reading ``curves.jsonl``.

Checkpoints are the trainer's own (``checkpoint-N/``, written every ``train.checkpoint_every`` steps into
the stage's checkpoint directory, the last ``keep_checkpoints`` kept). A checkpoint counts as usable when
its ``trainer_state.json`` (written last) parses and every weight, optimizer and RNG file in it opens; a
damaged newest one (a kill during the save) is set aside and the one before it used.
"""

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignment.config import TrainSpec

Progress = Callable[[float, dict[str, Any]], None]  # (fraction done, latest metrics) → None
SCRATCH = "checkpoints"  # trainers' scratch directory inside a stage's temp dir; never part of an artifact


def trainer_kwargs(train: TrainSpec, checkpoints: Path, n_rows: int, run_name: str) -> dict[str, Any]:
    """TrainingArguments shared by TRL's config classes. ``use_cpu`` on a CPU is what makes `accelerate
    launch` with N processes run one N-process job there (without it: N separate single-process runs)."""
    import torch

    steps_per_epoch = math.ceil(n_rows / (train.batch_size * train.grad_accum))
    total = train.max_steps if train.max_steps > 0 else math.ceil(steps_per_epoch * train.epochs)
    cuda = torch.cuda.is_available()
    if "tensorboard" in train.report_to:  # not under the checkpoints, which go once the artifact is committed
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(tracker_dir(run_name))
    return {
        "output_dir": str(checkpoints),
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
        "use_liger_kernel": train.liger_kernel,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "use_cpu": not cuda,
        "save_strategy": "steps",
        "save_steps": train.checkpoint_every,
        "save_total_limit": train.keep_checkpoints,
        "report_to": list(train.report_to),
        "run_name": run_name,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": cuda,
    }


def tracker_dir(name: str) -> Path:
    """Where local trackers (TensorBoard) write: ``$ALIGNMENT_HOME/tensorboard/<run name>``."""
    from alignment.artifacts import alignment_home

    return alignment_home() / "tensorboard" / name


def run_name(context_run: dict[str, Any], stage: str, key: str) -> str:
    """Trackers name the run after the Prefect flow run and the stage; outside Prefect, stage and key."""
    flow_run = context_run.get("flow_run_id")
    return f"{flow_run}-{stage}" if flow_run else f"{stage}-{key}"


def check_train(train: TrainSpec) -> None:
    """What `train` asks for must be installed (each tracker's package, Liger): say so before any model loads."""
    from importlib.util import find_spec

    missing = [name for name in train.report_to if find_spec(name) is None]
    if missing:
        raise ValueError(f"train.report_to: {missing} set but not installed; `pip install {' '.join(missing)}` "
                         "or remove them")
    if train.liger_kernel and find_spec("liger_kernel") is None:
        raise ValueError("train.liger_kernel: true needs the liger-kernel package (GPUs): `pip install liger-kernel`, "
                         "or set it to false")


def _opens(path: Path) -> bool:
    """A weight, optimizer or RNG file that is whole: safetensors headers parse and cover the file, torch
    (zip) archives have their central directory (written last)."""
    import zipfile

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                list(f.keys())
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path) as z:
                z.namelist()
        return True
    except Exception:  # noqa: BLE001 - any failure to open means "damaged"
        return False


def usable_files(directory: Path) -> bool:
    """Every weight, optimizer and RNG file under `directory` opens (see ``_opens``)."""
    return all(_opens(p) for p in directory.rglob("*") if p.is_file())


def usable(checkpoint: Path) -> bool:
    """A trainer checkpoint that can be resumed: its state (written last) parses, it has an optimizer
    state (``optimizer.pt``, or DeepSpeed's ``*optim_states.pt``) and all its files open."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    names = [p.name for p in checkpoint.rglob("*")]
    has_optimizer = any(n == "optimizer.pt" or n.endswith("optim_states.pt") for n in names)
    return has_optimizer and usable_files(checkpoint)


def resume_point(checkpoints: Path) -> Path | None:
    """The newest usable ``checkpoint-N``; damaged newer ones are renamed ``damaged-checkpoint-N``."""
    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for ckpt in found:
        if usable(ckpt):
            return ckpt
        ckpt.rename(ckpt.with_name(f"damaged-{ckpt.name}"))
    return None


def train(trainer, checkpoints: Path) -> tuple[Any, int, list[dict[str, Any]]]:
    """Train, resuming from the newest usable checkpoint; returns TRL's result, the step resumed from
    (0: a fresh start) and the logged history (across the resume: the trainer restores it)."""
    import torch.distributed as dist

    from alignment import launch

    launch.check_world(trainer.args.world_size)
    start = resume_point(checkpoints) if trainer.args.process_index == 0 else None
    if dist.is_available() and dist.is_initialized():  # every rank resumes from rank 0's choice
        box = [str(start) if start else None]
        dist.broadcast_object_list(box, src=0)
        start = Path(box[0]) if box[0] else None
    result = trainer.train(resume_from_checkpoint=str(start) if start else None)
    history = [{"step": h["step"], **{k: v for k, v in h.items() if isinstance(v, int | float)}}
               for h in trainer.state.log_history if "step" in h]
    return result, int(start.name.split("-")[1]) if start else 0, history


def resumable(trainer_cls):
    """`trainer_cls` able to resume a multi-process run on a CPU: transformers loads the optimizer with
    ``map_location=args.device``, which is ``cpu:0`` there and which torch cannot restore to."""
    import torch

    class Resumable(trainer_cls):
        def _load_optimizer_and_scheduler(self, checkpoint):
            if checkpoint is None or self.args.device.type != "cpu":
                return super()._load_optimizer_and_scheduler(checkpoint)
            real = torch.load

            def load(*args, map_location=None, **kwargs):
                return real(*args, map_location="cpu" if map_location is not None else None, **kwargs)

            torch.load = load
            try:
                return super()._load_optimizer_and_scheduler(checkpoint)
            finally:
                torch.load = real

    Resumable.__name__ = Resumable.__qualname__ = f"Resumable{trainer_cls.__name__}"
    return Resumable


def save_model(trainer, tokenizer, out: Path, task: str = "causal") -> dict[str, Any]:
    """Save the trained model as the artifact's ``model/`` (merged) and ``adapter/`` (LoRA). In one
    process straight from memory; across processes every rank takes part in the trainer's own save (it
    gathers ZeRO-3 shards), then rank 0 reloads that on the CPU and merges."""
    from alignment.models import save_trained

    if trainer.args.world_size == 1:
        return save_trained(trainer.model, tokenizer, out)
    scratch = out / SCRATCH / "final"
    trainer.save_model(str(scratch))
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return {}
    return save_trained(_reload(scratch, task), tokenizer, out)


def _reload(path: Path, task: str):
    """The model a trainer saved: a PEFT adapter on its base, or a full model. Loaded whole on this process:
    the trainer's ZeRO-3 setting would make ``from_pretrained`` partition it across ranks that have left."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

        cls = AutoPeftModelForCausalLM if task == "causal" else AutoPeftModelForSequenceClassification
        return cls.from_pretrained(str(path), **({"num_labels": 1} if task != "causal" else {}))
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM if task == "causal" else AutoModelForSequenceClassification
    return cls.from_pretrained(str(path))


def progress_callback(progress: Progress | None):
    """A TrainerCallback that reports progress with the latest logged metrics."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        latest: dict[str, Any] = {}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                self.latest = {k: v for k, v in logs.items() if isinstance(v, int | float)}

        def on_step_end(self, args, state, control, **kwargs):
            if progress and state.max_steps:
                progress(state.global_step / state.max_steps, self.latest)

    return _Progress()


def write_curves(out: Path, history: list[dict[str, Any]]) -> None:
    with open(out / "curves.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def read_curves(artifact_path: str | Path) -> list[dict[str, Any]]:
    path = Path(artifact_path) / "curves.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Config fields of a training stage that cannot change its result: its key leaves them out.
UNHASHED = {
    "options.launch": "hashed as what of it changes the result (processes, ZeRO stage, precision): alignment.launch",
    "options.train.checkpoint_every": "a resumed run continues where the checkpoint left off (trainer and RNG state)",
    "options.train.keep_checkpoints": "how many checkpoints stay on disk",
    "options.train.report_to": "trackers only observe the run",
}
