"""Direct preference optimisation with TRL ``DPOTrainer``.

The start model is both policy and reference, unless `reference` names another model (iterative DPO
with a fixed reference). With LoRA the reference is the same weights with the adapter disabled (no second
copy in memory). Held-out pairs give the preference accuracy of the implicit
reward, ``beta * (log pi(y|x) - log pi_ref(y|x))``, chosen vs rejected (TRL's ``eval_rewards/accuracies``).
Output: ``model/``, ``adapter/`` (LoRA), ``curves.jsonl``, ``manifest.json``.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment import training
from alignment.artifacts import StageResult
from alignment.config import DPOStageConfig
from alignment.data import LoadedData, check_lengths, load_data
from alignment.models import load_model, load_tokenizer, peft_config
from alignment.stages.contract import RunContext, StageSpec, cli
from alignment.training import progress_callback, trainer_kwargs, write_curves

SPEC = StageSpec(
    name="dpo",
    config=DPOStageConfig,
    outputs={"model": "model", "adapter": "adapter", "curves": "curves.jsonl"},
    optional_outputs=("adapter",),
    curves=("loss", "rewards/margins", "rewards/accuracies"),
    # None without eval_data
    headline=("heldout_rewards_accuracies", "heldout_rewards_margins", "heldout_pairs", "train_seconds"),
    progress=("loss", "rewards/accuracies", "rewards/margins"),
    unhashed=training.UNHASHED,
)
EVAL_KEYS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen",
             "eval_rewards/rejected")


@dataclass
class DPOInputs:
    pairs: LoadedData
    held_out: LoadedData | None
    over_length: int  # pairs longer than train.max_length (estimated): the trainer truncates them


def validate(config: DPOStageConfig) -> DPOInputs:
    training.check_train(config.options.train)
    pairs = load_data(config.data, "preference")
    return DPOInputs(pairs, load_data(config.eval_data, "preference") if config.eval_data else None,
                     check_lengths(pairs, config.options.train.max_length, "train.max_length"))


def _pairs(data: LoadedData):
    """prompt/chosen/rejected only: DPO's sigmoid loss takes hard labels (AI-feedback `soft_label`s are
    used by the reward stage, or by filtering with feedback.min_margin)."""
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data.rows])


def train(out: Path, config: DPOStageConfig, inputs: DPOInputs, context: RunContext, checkpoints: Path) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    data, held_out = inputs.pairs, inputs.held_out
    tok = load_tokenizer(config.model)
    model = load_model(config.model, config.options.adapter)
    peft = peft_config(config.options.adapter)
    if config.reference is not None:  # a reference other than the start (iterative DPO, fixed reference)
        ref = load_model(config.reference)
    else:  # LoRA: the start is the policy with its adapter disabled; full FT needs a frozen copy
        ref = None if peft is not None else load_model(config.model)
    kwargs = trainer_kwargs(config.options.train, checkpoints, len(data.rows), training.run_name(context.run, "dpo", checkpoints.name))
    if held_out:
        # TRL averages metrics over eval batches; equal-sized batches make that the exact per-pair mean.
        n = len(held_out.rows)
        kwargs["per_device_eval_batch_size"] = max(d for d in range(1, config.options.train.batch_size + 1) if n % d == 0)
    args = DPOConfig(**kwargs, beta=config.options.beta, loss_type=[config.options.loss_type.value],
                     precompute_ref_log_probs=config.options.precompute_ref_log_probs)
    trainer = training.resumable(DPOTrainer)(
        model=model, ref_model=ref, args=args, train_dataset=_pairs(data),
        eval_dataset=_pairs(held_out) if held_out else None, processing_class=tok, peft_config=peft,
        callbacks=[progress_callback(context.progress)])
    result, resumed, history = training.train(trainer, checkpoints)
    write_curves(out, history)
    metrics: dict[str, Any] = {
        "train_pairs": len(data.rows), "steps": result.global_step, "train_loss": result.training_loss,
        "train_seconds": result.metrics.get("train_runtime"), "beta": config.options.beta,
        "loss_type": config.options.loss_type.value, "adapter_mode": config.options.adapter.mode.value,
        "data_format": data.format.value, "resumed_from_step": resumed, "rows_over_max_length": inputs.over_length,
        "pairs_identical_dropped": data.dropped_identical,
        "heldout_pairs": len(held_out.rows) if held_out else None,
        **{k.replace("eval_", "heldout_").replace("/", "_"): None for k in EVAL_KEYS},
    }
    if held_out:
        ev = trainer.evaluate()
        metrics.update({k.replace("eval_", "heldout_").replace("/", "_"): ev[k] for k in EVAL_KEYS if k in ev})
    metrics.update(training.save_model(trainer, tok, out))
    return metrics


def run(config: DPOStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, train(out, job.config, inputs, job.context, job.checkpoints))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
