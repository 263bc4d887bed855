"""PPO stage: the policy (LoRA by default) trained against a reward model, rule and/or judge with our PPO
(``alignment.rl.ppo``; TRL 1.16 has none).

The reference is the start model: with LoRA, the same weights with the adapter disabled (no second copy
in memory); with full fine-tuning, a frozen copy. Checkpoints go to
``$ALIGNMENT_HOME/checkpoints/ppo/<artifact key>/`` every `train.checkpoint_every` iterations: if a run
stops (crash, kill -9, cancelled flow run), running the same config again resumes from the newest one
that loads, and they are deleted once the artifact is committed. Several processes (`launch`): each
samples its share of the prompts; DDP or DeepSpeed ZeRO-2/3 (``alignment.rl.ppo``).
Held-out answers and their reward, KL and length drift are the ``respond`` and ``evaluate`` steps' job.

Output: ``model/`` (merged, safetensors), ``adapter/``, ``value_head.safetensors``, ``curves.jsonl`` (one
row per iteration: score, KL, entropy, clip fractions, value loss, explained variance, length),
``rollouts.jsonl`` (sample rollouts every `sample_every` iterations), ``manifest.json``.
"""

import json
from pathlib import Path
from typing import Any

from alignment import training
from alignment.artifacts import StageResult
from alignment.config import EngineKind, PPOStageConfig
from alignment.rl.stage import RLInputs, load_policy, mean_of, validate_rl
from alignment.stages.contract import RunContext, StageSpec, cli
from alignment.training import write_curves

SPEC = StageSpec(
    name="ppo",
    config=PPOStageConfig,
    templates=lambda c: ("reward_judge.jinja",) if c.reward.judge is not None else (),
    outputs={"model": "model", "adapter": "adapter", "value_head": "value_head.safetensors",
             "curves": "curves.jsonl", "rollouts": "rollouts.jsonl"},
    optional_outputs=("adapter",),
    curves=("score", "kl", "entropy", "clipfrac", "value_loss", "explained_variance", "returns_std", "response_length"),
    headline=("train_score_first3", "train_score_last3", "train_kl_last3", "explained_variance_last3",
              "train_seconds"),
    progress=("score", "kl"),
    unhashed=training.UNHASHED,  # PPO resumes exactly: every draw is seeded by iteration (tested)
)


def rollout_engine(config: PPOStageConfig):
    """None for `hf` (the loop samples with the live policy); a vLLM engine that takes new weights."""
    if config.options.engine.kind is EngineKind.hf:
        return None
    from alignment import launch

    if launch.plan(config.options.launch).multi_process:
        raise ValueError("engine.kind: 'vllm' for PPO rollouts needs one process (each would load its own "
                         "vLLM and its own copy of the weights); use engine.kind: hf with several processes")
    if config.options.engine.kind is not EngineKind.vllm:
        raise ValueError(f"engine.kind: {config.options.engine.kind.value!r} cannot take the policy's new weights every "
                         "iteration; use 'hf' or 'vllm' for PPO rollouts")
    from alignment.generation.vllm_engine import VLLMEngine

    return VLLMEngine.load(config.model, config.options.engine)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def train(out: Path, config: PPOStageConfig, inputs: RLInputs, context: RunContext, checkpoints: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file
    from trl.models.utils import unwrap_model_for_generation

    from alignment.models import save_trained
    from alignment.rewards import RewardFunction
    from alignment.rl.ppo import PPOLoop

    policy, ref, tok = load_policy(config)
    reward_fn = RewardFunction.load(config.reward)
    engine = None
    try:
        if torch.cuda.is_available():
            policy.to("cuda")
        engine = rollout_engine(config)
        loop = PPOLoop(config, policy, tok, reward_fn, inputs.prompts, ref_model=ref, engine=engine,
                       progress=context.progress, trackers=config.options.train.report_to,
                       run_name=training.run_name(context.run, "ppo", checkpoints.name))
        resumed = loop.resume(checkpoints)
        history = loop.train(checkpoints)
        value_head = loop.value_head_state()  # every process: gathered under ZeRO-3
        metrics: dict[str, Any] = {
            "iterations": len(history), "resumed_from_step": int(resumed.name.split("-")[1]) if resumed else 0,
            "rollouts": len(history) * config.options.rollout_batch, "train_score_first3": mean_of(history, "score", last=False),
            "train_score_last3": mean_of(history, "score", last=True), "train_kl_last3": mean_of(history, "kl", last=True),
            "kl_coef_final": loop.kl.coef, "entropy_last3": mean_of(history, "entropy", last=True),
            "response_length_last3": mean_of(history, "response_length", last=True),
            "explained_variance_last3": mean_of(history, "explained_variance", last=True),
            "train_seconds": sum(r["iteration_s"] for r in history), "rollout_engine": engine.name if engine else "hf",
        }
        with unwrap_model_for_generation(loop.model, loop.accelerator) as unwrapped:  # gathers ZeRO-3 shards
            if loop.accelerator.is_main_process:
                write_curves(out, history)
                write_jsonl(out / SPEC.outputs["rollouts"], loop.samples)
                save_file(value_head, str(out / SPEC.outputs["value_head"]))
                metrics.update(save_trained(unwrapped.policy, tok, out))
        loop.end()
    finally:
        reward_fn.close()
        if engine is not None:
            engine.close()
    return metrics


def run(config: PPOStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate_rl(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, train(out, job.config, inputs, job.context, job.checkpoints))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
