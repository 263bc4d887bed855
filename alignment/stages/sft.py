"""Supervised fine-tuning with TRL ``SFTTrainer`` (full, LoRA or QLoRA).

Conversational rows are trained as prompt → final assistant turn (loss on the completion only), which
works with any chat template. Output: ``model/`` (merged, safetensors), ``adapter/`` (LoRA),
``curves.jsonl``, ``manifest.json``. Held-out answers are the ``respond`` stage's job, so evaluation
prompts never retrain SFT.
"""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment import training
from alignment.artifacts import StageResult
from alignment.config import SFTStageConfig
from alignment.data import LoadedData, check_lengths, load_data
from alignment.models import load_model, load_tokenizer, peft_config
from alignment.stages.contract import RunContext, StageSpec, cli
from alignment.training import progress_callback, trainer_kwargs, write_curves

SPEC = StageSpec(
    name="sft",
    config=SFTStageConfig,
    outputs={"model": "model", "adapter": "adapter", "curves": "curves.jsonl"},
    optional_outputs=("adapter",),
    curves=("loss",),
    headline=("loss_first", "loss_last", "train_seconds"),
    progress=("loss",),
    unhashed=training.UNHASHED,
)


@dataclass
class SFTInputs:
    data: LoadedData
    mix: LoadedData | None
    over_length: int  # rows longer than train.max_length (estimated): the trainer truncates them


def to_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    """``messages`` ending in an assistant turn → ``prompt`` (all before) + ``completion`` (that turn)."""
    if "messages" not in row:
        return row
    msgs = row["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return {"prompt": msgs[:last], "completion": [msgs[last]]}


def validate(config: SFTStageConfig) -> SFTInputs:
    training.check_train(config.options.train)
    data = load_data(config.data, "sft")
    return SFTInputs(data, load_data(config.options.mix_data, "sft") if config.options.mix_data else None,
                     check_lengths(data, config.options.train.max_length, "train.max_length"))


def mixed_rows(data: LoadedData, mix: LoadedData | None, ratio: float, seed: int) -> list[dict[str, Any]]:
    """`data` plus a seeded sample of `mix` so that `mix` makes up `ratio` of the rows (as far as it has rows)."""
    rows = [to_prompt_completion(r) for r in data.rows]
    if mix is None or ratio == 0:
        return rows
    want = min(len(mix.rows), round(ratio / (1 - ratio) * len(rows)))
    extra = random.Random(seed).sample(mix.rows, want)
    combined = rows + [to_prompt_completion(r) for r in extra]
    random.Random(seed + 1).shuffle(combined)
    return combined


def train(out: Path, config: SFTStageConfig, inputs: SFTInputs, context: RunContext, checkpoints: Path) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = inputs.data
    rows = mixed_rows(data, inputs.mix, config.options.mix_ratio, config.options.train.seed)
    tok = load_tokenizer(config.model)
    model = load_model(config.model, config.options.adapter)
    args = SFTConfig(**trainer_kwargs(config.options.train, checkpoints, len(rows), training.run_name(context.run, "sft", checkpoints.name)),
                     completion_only_loss=config.options.assistant_only_loss)
    trainer = training.resumable(SFTTrainer)(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
        peft_config=peft_config(config.options.adapter), callbacks=[progress_callback(context.progress)])
    result, resumed, history = training.train(trainer, checkpoints)
    write_curves(out, history)
    losses = [h["loss"] for h in history if "loss" in h]
    metrics: dict[str, Any] = {
        "train_rows": len(rows), "mix_rows": len(rows) - len(data.rows), "steps": result.global_step, "train_loss": result.training_loss,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "train_seconds": result.metrics.get("train_runtime"), "adapter_mode": config.options.adapter.mode.value,
        "data_format": data.format.value, "resumed_from_step": resumed, "rows_over_max_length": inputs.over_length,
    }
    metrics.update(training.save_model(trainer, tok, out))
    return metrics


def run(config: SFTStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, train(out, job.config, inputs, job.context, job.checkpoints))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
