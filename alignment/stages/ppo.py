"""PPO stage: the policy (LoRA by default) trained against a reward model, rule and/or judge with our PPO
(``alignment.rl.ppo``; TRL 1.16 has none).

The reference is the start model: with LoRA, the same weights with the adapter disabled (no second copy
in memory); with full fine-tuning, a frozen copy. Checkpoints go to
``$ALIGNMENT_HOME/checkpoints/ppo/<artifact key>/``: if a run stops (crash, cancelled flow run), running
the same config again resumes from the last one, and they are deleted once the artifact is written.

Output: ``model/`` (merged, safetensors), ``adapter/``, ``value_head.safetensors``, ``curves.jsonl`` (one
row per iteration: score, KL, entropy, clip fractions, value loss, explained variance, length),
``rollouts.jsonl`` (sample rollouts every `sample_every` iterations), ``heldout.jsonl`` and
``samples.jsonl`` (held-out responses before/after), ``manifest.json``.
"""

import json
import shutil
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult, alignment_home
from alignment.config import AdapterMode, PPOStageConfig
from alignment.data import load_data
from alignment.stages.common import RunContext, artifact_key, cli, run_stage, write_curves

CONFIG = PPOStageConfig
STAGE = "ppo"


def validate_rl(config) -> dict[str, Any]:
    """What every RL stage checks before loading a model: prompts, held-out prompts, the reward sources."""
    from alignment.models import resolve_model_path

    prompts = load_data(config.prompts, "prompts")
    heldout = load_data(config.eval_prompts, "prompts") if config.eval_prompts else None
    if config.reward.model is not None:
        name = config.reward.model.name
        if Path(name).is_dir() or name.startswith((".", "/")):
            resolve_model_path(config.reward.model)  # a clear error for a missing local reward model
    return {"prompts": [r["prompt"] for r in prompts.rows],
            "heldout": [r["prompt"] for r in heldout.rows] if heldout else []}


def checkpoint_root(config: PPOStageConfig) -> Path:
    return alignment_home() / "checkpoints" / STAGE / artifact_key(STAGE, config)


def load_policy(config):
    """(policy, reference or None, tokenizer): LoRA policies carry their reference (adapter disabled)."""
    from peft import get_peft_model

    from alignment.models import load_model, load_tokenizer, peft_config

    tok = load_tokenizer(config.model)
    policy = load_model(config.model, config.adapter)
    lora = peft_config(config.adapter)
    ref = None
    if lora is None:
        ref = load_model(config.model)
        ref.requires_grad_(False)
    else:
        lora.lora_dropout = 0.0  # PPO's ratio must be 1 on the data it was sampled from
        if config.adapter.mode is AdapterMode.qlora:
            from peft import prepare_model_for_kbit_training

            policy = prepare_model_for_kbit_training(policy)
        policy = get_peft_model(policy, lora)
    if config.train.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    return policy, ref, tok


def rollout_engine(config):
    """None for `hf` (the loop samples with the live policy); a vLLM engine that takes new weights."""
    from alignment.config import EngineKind
    from alignment.generation import resolve_kind

    kind = resolve_kind(config.engine)
    if kind is EngineKind.hf:
        return None
    if kind is not EngineKind.vllm:
        raise ValueError(f"engine.kind: {kind.value!r} cannot take the policy's new weights every iteration; "
                         "use 'hf' or 'vllm' for PPO rollouts")
    from alignment.generation.vllm_engine import VLLMEngine

    return VLLMEngine.load(config.model, config.engine)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def finish(out: Path, config, policy, ref, tok, reward_fn, heldout: list, before: dict | None,
           algorithm: str) -> dict[str, Any]:
    """Held-out after-measures, samples.jsonl and the saved model (shared by PPO, GRPO and RLOO)."""
    from alignment.models import save_trained
    from alignment.rl import heldout as ho

    metrics: dict[str, Any] = {}
    if heldout:
        after = ho.measure(policy, tok, heldout, reward_fn, config.generation)
        kl = ho.kl_on_samples(policy, tok, heldout, config.rollout, ref_model=ref)
        metrics.update(ho.report(out, heldout, before, after, kl))
        ho.write_markdown(out, algorithm, metrics)
        write_jsonl(out / "samples.jsonl", [{"prompt": c, "response": t, "tokens": n} for c, t, n in
                                            zip(heldout, after["texts"], after["lengths"], strict=True)])
    metrics.update(save_trained(policy, tok, out))
    return metrics


def train(out: Path, checked: dict[str, Any], context: RunContext, config: PPOStageConfig) -> dict[str, Any]:
    from safetensors.torch import save_file

    from alignment.rewards import RewardFunction
    from alignment.rl import heldout as ho
    from alignment.rl.ppo import PPOLoop, latest_checkpoint

    policy, ref, tok = load_policy(config)
    reward_fn = RewardFunction.load(config.reward)
    engine = None
    try:
        import torch

        if torch.cuda.is_available():
            policy.to("cuda")
        before = ho.measure(policy, tok, checked["heldout"], reward_fn, config.generation) if checked["heldout"] else None
        engine = rollout_engine(config)
        loop = PPOLoop(config, policy, tok, reward_fn, checked["prompts"], ref_model=ref, engine=engine,
                       progress=context.progress)
        root = checkpoint_root(config)
        resumed = latest_checkpoint(root)
        if resumed is not None:
            loop.load_checkpoint(resumed)
        history = loop.train(root)
        policy = loop.accelerator.unwrap_model(loop.policy)
        write_curves(out, history)
        write_jsonl(out / "rollouts.jsonl", loop.samples)
        save_file(loop.value_head_state(), str(out / "value_head.safetensors"))
        first, last = history[: min(3, len(history))], history[-min(3, len(history)):]
        mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
        metrics: dict[str, Any] = {
            "iterations": len(history), "resumed_from_iteration": int(resumed.name.split("-")[1]) if resumed else 0,
            "rollouts": len(history) * config.rollout_batch, "train_score_first3": mean(first, "score"),
            "train_score_last3": mean(last, "score"), "train_kl_last3": mean(last, "kl"),
            "kl_coef_final": loop.kl.coef, "entropy_last3": mean(last, "entropy"),
            "response_length_last3": mean(last, "response_length"),
            "explained_variance_last3": mean(last, "explained_variance"),
            "train_seconds": sum(r["iteration_s"] for r in history), "rollout_engine": engine.name if engine else "hf",
        }
        metrics.update(finish(out, config, policy, ref, tok, reward_fn, checked["heldout"], before, STAGE))
    finally:
        reward_fn.close()
        if engine is not None:
            engine.close()
    shutil.rmtree(checkpoint_root(config), ignore_errors=True)
    return metrics


def run(config: PPOStageConfig, context: RunContext | None = None) -> StageResult:
    return run_stage(STAGE, config, lambda: validate_rl(config),
                     lambda out, checked, ctx: train(out, checked, ctx, config), context)


if __name__ == "__main__":
    cli(PPOStageConfig, run, STAGE)
