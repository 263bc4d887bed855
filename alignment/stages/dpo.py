"""Direct preference optimisation with TRL ``DPOTrainer``.

The start model is both policy and reference. With LoRA the reference is the same weights with the
adapter disabled (no second copy in memory). Held-out pairs give the preference accuracy of the implicit
reward, ``beta * (log pi(y|x) - log pi_ref(y|x))``, chosen vs rejected (TRL's ``eval_rewards/accuracies``).
"""

from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import DPOStageConfig
from alignment.data import LoadedData, load_data
from alignment.generation import answer_prompts
from alignment.generation.hf import HFEngine
from alignment.models import effective_mode, load_model, load_tokenizer, peft_config, save_trained
from alignment.stages.common import RunContext, cli, metrics_callback, run_stage, trainer_kwargs, write_curves

CONFIG = DPOStageConfig
STAGE = "dpo"
EVAL_KEYS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen",
             "eval_rewards/rejected")


def validate(config: DPOStageConfig) -> tuple[LoadedData, LoadedData | None, LoadedData | None]:
    train = load_data(config.data, "preference")
    held_out = load_data(config.eval_data, "preference") if config.eval_data else None
    prompts = load_data(config.eval_prompts, "prompts") if config.eval_prompts else None
    return train, held_out, prompts


def _pairs(data: LoadedData):
    """prompt/chosen/rejected only: DPO's sigmoid loss takes hard labels (AI-feedback `soft_label`s are
    used by the reward stage, or by filtering with feedback.min_margin)."""
    from datasets import Dataset

    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data.rows])


def train(out: Path, checked, context: RunContext, config: DPOStageConfig) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    data, held_out, prompts = checked
    tok = load_tokenizer(config.model)
    model = load_model(config.model, config.adapter)
    peft = peft_config(config.adapter)
    ref = None if peft is not None else load_model(config.model)  # full FT needs a frozen copy
    history: list[dict[str, Any]] = []
    kwargs = trainer_kwargs(config.train, out, len(data.rows))
    if held_out:
        # TRL averages metrics over eval batches; equal-sized batches make that the exact per-pair mean.
        n = len(held_out.rows)
        kwargs["per_device_eval_batch_size"] = max(d for d in range(1, config.train.batch_size + 1) if n % d == 0)
    args = DPOConfig(**kwargs, beta=config.beta, loss_type=[config.loss_type.value])
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=_pairs(data),
                         eval_dataset=_pairs(held_out) if held_out else None, processing_class=tok,
                         peft_config=peft, callbacks=[metrics_callback(history, context.progress)])
    result = trainer.train()
    write_curves(out, history)
    metrics: dict[str, Any] = {
        "train_pairs": len(data.rows), "steps": result.global_step, "train_loss": result.training_loss,
        "train_seconds": result.metrics.get("train_runtime"), "beta": config.beta,
        "loss_type": config.loss_type.value, "adapter_mode": effective_mode(config.adapter).value,
        "data_format": data.format.value,
    }
    if held_out:
        ev = trainer.evaluate()
        metrics["heldout_pairs"] = len(held_out.rows)
        metrics.update({k.replace("eval_", "heldout_").replace("/", "_"): ev[k] for k in EVAL_KEYS if k in ev})
    model = trainer.model
    if prompts:
        answer_prompts(HFEngine(model, tok), prompts.rows, config.generation, out)
    metrics.update(save_trained(model, tok, out))
    return metrics


def run(config: DPOStageConfig, context: RunContext | None = None) -> StageResult:
    return run_stage(STAGE, config, lambda: validate(config),
                     lambda out, checked, ctx: train(out, checked, ctx, config), context)


if __name__ == "__main__":
    cli(DPOStageConfig, run, STAGE)
