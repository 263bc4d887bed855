"""Reward model with TRL ``RewardTrainer``: a sequence classifier with one output, trained so that
``r(prompt, chosen) > r(prompt, rejected)`` (Bradley–Terry, ``-log σ(r_c - r_r)``).

Soft targets: rows with a ``soft_label`` p = P(chosen is better) (the constitutional-ai feedback stage
writes them) train on ``-(p log σ(Δ) + (1 - p) log σ(-Δ))`` instead, so an unsure AI label pulls the
two rewards together rather than apart; TRL has no such loss, so ``SoftLabelRewardTrainer`` adds it.

Held-out pairs (``eval_data``, or a seeded ``heldout_fraction`` of ``data``) are scored after training:
accuracy with a bootstrap interval, the reward-margin distribution, and a "longer answer wins" baseline
on the same pairs (a reward model that only learned length would match it). Output: ``model/`` (merged
classifier, safetensors), ``adapter/`` (LoRA), ``heldout.jsonl``, ``curves.jsonl``, ``manifest.json``.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment import training
from alignment.artifacts import StageResult
from alignment.config import RewardStageConfig
from alignment.data import DataError, check_lengths, load_data
from alignment.models import load_tokenizer, resolve_model_path, save_trained, torch_dtype
from alignment.stages.contract import RunContext, StageSpec, cli
from alignment.stats import bootstrap_ci
from alignment.training import progress_callback, trainer_kwargs, write_curves

SPEC = StageSpec(
    name="reward",
    config=RewardStageConfig,
    outputs={"model": "model", "adapter": "adapter", "curves": "curves.jsonl", "heldout": "heldout.jsonl",
             "report": "report.md"},
    optional_outputs=("adapter", "heldout"),
    curves=("loss", "accuracy", "margin"),
    # None without held-out pairs
    headline=("heldout_accuracy", "heldout_accuracy_ci_low", "heldout_accuracy_ci_high",
              "heldout_length_baseline_accuracy", "heldout_accuracy_chosen_longer", "heldout_accuracy_chosen_shorter",
              "heldout_length_warning", "heldout_pairs", "train_seconds"),
    progress=("loss", "accuracy"),
    unhashed=training.UNHASHED,
)
BOOTSTRAP = 1000
HELDOUT_KEYS = SPEC.headline[:-1]


@dataclass
class RewardInputs:
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    soft: bool  # train on soft targets
    format: str
    identical: int  # pairs with the same two answers (dropped by the data layer)


def _columns(row: dict[str, Any], soft: bool) -> dict[str, Any]:
    out = {k: row[k] for k in ("prompt", "chosen", "rejected")}
    if soft:
        out["soft_label"] = row["soft_label"]
    return out


def validate(config: RewardStageConfig) -> RewardInputs:
    training.check_train(config.options.train)
    data = load_data(config.data, "preference")
    check_lengths(data, config.options.train.max_length, "train.max_length")  # TRL drops them: refused if most are
    with_soft = sum("soft_label" in r for r in data.rows)
    if config.options.targets == "soft" and with_soft < len(data.rows):
        first = next(i for i, r in enumerate(data.rows) if "soft_label" not in r)
        raise DataError(f"{data.source} row {first + 1}: targets is 'soft' but the row has no 'soft_label'; "
                        f"{with_soft} of {len(data.rows)} rows have one. Add it, or use targets: hard")
    soft = config.options.targets == "soft" or (config.options.targets == "auto" and with_soft == len(data.rows))
    rows = data.rows
    if config.eval_data is not None:
        held_out = load_data(config.eval_data, "preference").rows
    elif config.options.heldout_fraction > 0:
        order = list(range(len(rows)))
        random.Random(config.options.train.seed).shuffle(order)
        n = max(1, round(config.options.heldout_fraction * len(rows)))
        if n >= len(rows):
            raise DataError(f"{data.source}: {len(rows)} rows leave none for training after holding out "
                            f"heldout_fraction = {config.options.heldout_fraction}; add rows or lower it")
        held = set(order[:n])
        held_out = [rows[i] for i in sorted(held)]
        rows = [r for i, r in enumerate(rows) if i not in held]
    else:
        held_out = []
    return RewardInputs(rows, held_out, soft, data.format.value, data.dropped_identical)


def soft_label_trainer():
    """``RewardTrainer`` with a cross-entropy loss on soft targets when batches carry ``soft_label``."""
    import torch
    from torch import nn
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class SoftLabelCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            out = super().torch_call(examples)
            if "soft_label" in examples[0]:
                out["soft_label"] = torch.tensor([e["soft_label"] for e in examples], dtype=torch.float)
            return out

    class SoftLabelRewardTrainer(RewardTrainer):
        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "soft_label"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            soft = inputs.pop("soft_label", None)
            if soft is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            outputs = model(**inputs)
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            delta = chosen - rejected
            soft = soft.to(delta.dtype)
            loss = -(soft * nn.functional.logsigmoid(delta) + (1 - soft) * nn.functional.logsigmoid(-delta)).mean()
            if self.args.center_rewards_coefficient is not None:
                loss += self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
            with torch.no_grad():
                self._metrics[mode]["accuracy"].append((delta > 0).float().mean().item())
                self._metrics[mode]["margin"].append(delta.mean().item())
                self._metrics[mode]["soft_agreement"].append(((delta > 0).float() == (soft > 0.5).float()).float().mean().item())
            return (loss, outputs) if return_outputs else loss

    return SoftLabelRewardTrainer, SoftLabelCollator


def pair_rewards(model, tok, rows: list[dict[str, Any]], max_length: int, batch_size: int = 16) -> list[tuple[float, float]]:
    """(r_chosen, r_rejected) for each pair under `model`."""
    from alignment.rewards import RewardModel, chat_text

    rm = RewardModel(model, tok, max_length=max_length)
    chosen = rm.score_texts([chat_text(tok, r["prompt"], r["chosen"]) for r in rows], batch_size)
    rejected = rm.score_texts([chat_text(tok, r["prompt"], r["rejected"]) for r in rows], batch_size)
    return list(zip(chosen, rejected, strict=True))


def _length(tok, response: Any) -> int:
    text = response if isinstance(response, str) else " ".join(m["content"] for m in response)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def heldout_metrics(scores: list[tuple[float, float]], rows: list[dict[str, Any]], tok, out: Path) -> dict[str, Any]:
    """Accuracy (95% bootstrap interval), margin quantiles and histogram, and the length baseline."""
    import numpy as np

    margins = np.array([c - r for c, r in scores])
    correct = [float(m > 0) for m in margins]
    acc, lo, hi = bootstrap_ci(correct, BOOTSTRAP)
    longer = [float(_length(tok, r["chosen"]) > _length(tok, r["rejected"])) for r in rows]
    counts, edges = np.histogram(margins, bins=10)
    with open(out / SPEC.outputs["heldout"], "w", encoding="utf-8") as f:
        for row, (c, r) in zip(rows, scores, strict=True):
            f.write(json.dumps({"prompt": row["prompt"], "reward_chosen": c, "reward_rejected": r,
                                "margin": c - r, **({"soft_label": row["soft_label"]} if "soft_label" in row else {})},
                               ensure_ascii=False) + "\n")
    q = np.quantile(margins, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "heldout_pairs": len(rows), "heldout_accuracy": acc, "heldout_accuracy_ci_low": lo,
        "heldout_accuracy_ci_high": hi, "heldout_margin_mean": float(margins.mean()),
        **{f"heldout_margin_p{p}": float(v) for p, v in zip((10, 25, 50, 75, 90), q, strict=True)},
        "heldout_margin_histogram": {"counts": counts.tolist(), "edges": [round(float(e), 4) for e in edges]},
        "heldout_length_baseline_accuracy": sum(longer) / len(longer),
        **length_split(correct, longer, [float(m > 0) == lg for m, lg in zip(margins, longer, strict=True)]),
    }


def length_split(correct: list[float], longer: list[float], prefers_longer: list[bool]) -> dict[str, Any]:
    """What the model learned beyond length: accuracy where the chosen answer is the longer one and where
    it is the shorter one (each with a 95% interval), how often the model simply prefers the longer
    answer, and a warning when that explains most of its accuracy: it prefers the longer answer in at least
    80% of pairs, or it is right mostly where the chosen answer is longer (at most chance where it is shorter)."""
    out: dict[str, Any] = {}
    for name, keep in (("chosen_longer", 1.0), ("chosen_shorter", 0.0)):
        picked = [c for c, lg in zip(correct, longer, strict=True) if lg == keep]
        acc, lo, hi = bootstrap_ci(picked, BOOTSTRAP) if picked else (None, None, None)
        out.update({f"heldout_accuracy_{name}": acc, f"heldout_accuracy_{name}_ci_low": lo,
                    f"heldout_accuracy_{name}_ci_high": hi, f"heldout_pairs_{name}": len(picked)})
    rate = sum(prefers_longer) / len(prefers_longer) if prefers_longer else None
    out["heldout_prefers_longer_rate"] = rate
    shorter, longer_acc = out["heldout_accuracy_chosen_shorter"], out["heldout_accuracy_chosen_longer"]
    warning = None
    if rate is not None and rate >= 0.8:
        warning = f"prefers the longer answer in {rate:.0%} of held-out pairs: it mostly learned length"
    elif shorter is not None and longer_acc is not None and out["heldout_pairs_chosen_shorter"] >= 5 \
            and out["heldout_accuracy_chosen_shorter_ci_high"] <= 0.5 + 1e-9 and longer_acc - shorter >= 0.25:
        warning = (f"right on {longer_acc:.0%} of pairs whose chosen answer is longer but only {shorter:.0%} where it "
                   "is shorter (not above chance): it mostly learned length")
    out["heldout_length_warning"] = warning
    return out


def train(out: Path, config: RewardStageConfig, inputs: RewardInputs, context: RunContext,
          checkpoints: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig

    from alignment.models import peft_config

    soft = inputs.soft
    tok = load_tokenizer(config.model)
    torch.manual_seed(config.options.train.seed)  # the score head is initialised at random
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(config.model), num_labels=1, dtype=torch_dtype(config.model), use_safetensors=True,
        trust_remote_code=config.model.trust_remote_code)
    model.config.pad_token_id = tok.pad_token_id
    lora = peft_config(config.options.adapter, task_type="SEQ_CLS")
    train_rows = [_columns(r, soft) for r in inputs.train]
    args = RewardConfig(**trainer_kwargs(config.options.train, checkpoints, len(train_rows), training.run_name(context.run, "reward", checkpoints.name)),
                        center_rewards_coefficient=config.options.center_rewards)
    trainer_cls, collator_cls = soft_label_trainer()
    trainer = training.resumable(trainer_cls)(
        model=model, args=args, train_dataset=Dataset.from_list(train_rows), processing_class=tok, peft_config=lora,
        data_collator=collator_cls(pad_token_id=tok.pad_token_id), callbacks=[progress_callback(context.progress)])
    used = len(trainer.train_dataset)
    result, resumed, history = training.train(trainer, checkpoints)
    write_curves(out, history)
    losses = [h["loss"] for h in history if "loss" in h]
    metrics: dict[str, Any] = {
        "train_pairs": used, "dropped_too_long": len(train_rows) - used, "targets": "soft" if soft else "hard",
        "steps": result.global_step, "train_loss": result.training_loss,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "train_seconds": result.metrics.get("train_runtime"), "adapter_mode": config.options.adapter.mode.value,
        "data_format": inputs.format, "resumed_from_step": resumed, "pairs_identical_dropped": inputs.identical,
        **dict.fromkeys(HELDOUT_KEYS),
    }
    one_process = trainer.args.world_size == 1
    if not one_process:  # every rank takes part in the save; then rank 0 scores with the merged model
        metrics.update(training.save_model(trainer, tok, out, task="seq_cls"))
        if not trainer.accelerator.is_main_process:
            return metrics
        model = AutoModelForSequenceClassification.from_pretrained(out / SPEC.outputs["model"])
    model = (trainer.model if one_process else model).eval()
    if inputs.heldout:
        with torch.no_grad():
            scores = pair_rewards(model, tok, inputs.heldout, config.options.train.max_length)
        metrics.update(heldout_metrics(scores, inputs.heldout, tok, out))
    if one_process:
        metrics.update(save_trained(model, tok, out))
    write_report(out, metrics)
    return metrics


def _acc(m: dict[str, Any], part: str) -> str:
    acc = m.get(f"heldout_accuracy_{part}")
    if acc is None:
        return "no pairs"
    return (f"{acc:.3f} (95% CI {m[f'heldout_accuracy_{part}_ci_low']:.3f}–{m[f'heldout_accuracy_{part}_ci_high']:.3f}, "
            f"{m[f'heldout_pairs_{part}']} pairs)")


def write_report(out: Path, m: dict[str, Any]) -> None:
    """``report.md``: held-out accuracy against its baselines and the margin distribution as bars."""
    lines = ["# Reward model", "", f"Trained on {m['train_pairs']} pairs ({m['targets']} targets, "
             f"{m['dropped_too_long']} dropped as longer than max_length), {m['steps']} steps; "
             f"loss {m['loss_first']:.4g} → {m['loss_last']:.4g}.", ""]
    if m["heldout_accuracy"] is not None:
        lines += [f"**Held-out accuracy** on {m['heldout_pairs']} pairs: **{m['heldout_accuracy']:.3f}** "
                  f"(95% CI {m['heldout_accuracy_ci_low']:.3f}–{m['heldout_accuracy_ci_high']:.3f}); chance 0.5, "
                  f"'the longer answer is better' {m['heldout_length_baseline_accuracy']:.3f}. Where the chosen "
                  f"answer is the longer one: {_acc(m, 'chosen_longer')}; the shorter one: {_acc(m, 'chosen_shorter')}; "
                  f"it prefers the longer answer in {m['heldout_prefers_longer_rate']:.0%} of pairs.", "",
                  *([f"> ⚠ **Length bias**: {m['heldout_length_warning']}. Balance the lengths of chosen and rejected "
                     "answers in the training pairs, or add pairs whose better answer is the shorter one.", ""]
                    if m.get("heldout_length_warning") else []),
                  "Reward margin r(chosen) − r(rejected) on held-out pairs:", "", "| margin from | to | pairs | |",
                  "|---|---|---|---|"]
        h = m["heldout_margin_histogram"]
        top = max(h["counts"]) or 1
        for i, c in enumerate(h["counts"]):
            lines.append(f"| {h['edges'][i]:.3g} | {h['edges'][i + 1]:.3g} | {c} | `{'█' * round(20 * c / top)}` |")
    (out / SPEC.outputs["report"]).write_text("\n".join(lines) + "\n")


def run(config: RewardStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, train(out, job.config, inputs, job.context, job.checkpoints))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
