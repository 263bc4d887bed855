"""PPO and GRPO (or RLOO) on the default model against a trained reward model, on this machine.

    python bench/rl_default.py --reward-model <reward artifact dir> [--algorithms ppo grpo]

Prompts: ``data/redteam_train.jsonl`` for training and ``data/redteam_prompts.jsonl`` held out (harmful
requests, where a harmlessness reward model such as the one ``bench/reward_hh.py`` trains on HH-RLHF has
something to say). The start model's held-out answers (the baseline, measured in the same run) and each
trained policy's come from the ``respond`` stage; ``evaluate`` (no judge) scores both with the reward
model and estimates KL(policy ‖ start) on policy samples, as the rlhf flow does. One JSON line per
algorithm: held-out reward before and after with 95% intervals, the paired gain, KL, length drift, the
training curve's first/last scores and wall time. The same number of sampled responses per algorithm:
PPO 16 prompts × 1 response per iteration, GRPO/RLOO 4 prompts × 4 responses per step.
"""

import argparse
import json
import os
import platform
import time

from alignment.config import (
    ArtifactRef,
    EvaluateStageConfig,
    GRPOStageConfig,
    PPOStageConfig,
    RespondStageConfig,
    RLOOStageConfig,
)
from alignment.stages import evaluate, respond

HELDOUT = {"path": "data/redteam_prompts.jsonl"}
ANSWERS = {"max_new_tokens": 48}
KL = {"temperature": 1.0, "max_new_tokens": 48}


def answers(model: str):
    return respond.run(RespondStageConfig(model={"name": model}, sets={"heldout": HELDOUT}, generation=ANSWERS))


def per_iteration(path: str) -> dict[str, list]:
    """PPO's per-iteration KL, KL coefficient and explained variance (empty for GRPO/RLOO)."""
    from alignment.training import read_curves

    rows = read_curves(path)
    keys = ("kl", "kl_coef", "explained_variance", "score")
    return {k: [round(r[k], 3) for r in rows if k in r] for k in keys if any(k in r for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reward-model", required=True)
    p.add_argument("--algorithms", nargs="+", default=["ppo", "grpo"])
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--kl-target", type=float, default=None,
                   help="PPO: adaptive KL coefficient aiming at this KL per response (nats); default: fixed kl_coef")
    p.add_argument("--kl-horizon", type=int, default=10_000,
                   help="PPO: the adaptive controller's horizon in samples (Ziegler et al.; smaller adapts faster)")
    args = p.parse_args()
    common = {"model": {"name": args.model}, "prompts": {"path": "data/redteam_train.jsonl"},
              "reward": {"model": {"name": args.reward_model}}}
    rollout = {"temperature": 1.0, "max_new_tokens": 48}
    configs = {
        # no missing-EOS penalty here: at 48 new tokens most answers are cut, and the penalty would make
        # "stop early" the main thing learned; the held-out numbers are the reward model's alone either way
        "ppo": PPOStageConfig(**common, options=dict(
            iterations=args.iterations, rollout_batch=16, ppo_epochs=2, kl_coef=0.05, kl_target=args.kl_target,
            kl_horizon=args.kl_horizon, missing_eos_penalty=None, rollout=rollout,
            train={"learning_rate": 1e-4, "batch_size": 8})),
        "grpo": GRPOStageConfig(**common, options=dict(
            num_generations=4, beta=0.04, rollout=rollout,
            train={"learning_rate": 1e-4, "batch_size": 16, "max_steps": args.iterations, "logging_steps": 1})),
        "rloo": RLOOStageConfig(**common, options=dict(
            num_generations=4, beta=0.05, rollout=rollout,
            train={"learning_rate": 1e-4, "batch_size": 16, "max_steps": args.iterations, "logging_steps": 1})),
    }
    before = answers(args.model)
    for algo in args.algorithms:
        from importlib import import_module

        start = time.time()
        res = import_module(f"alignment.stages.{algo}").run(configs[algo])
        after = answers(res.path)
        m = evaluate.run(EvaluateStageConfig(policy=ArtifactRef(path=after.path), reference=ArtifactRef(path=before.path),
                                             judge=None, reward_model={"name": args.reward_model}, kl=KL)).metrics
        r = lambda k, m=m: round(m[k], 4)  # noqa: E731
        print(json.dumps({
            "bench": f"rl_default.{algo}", "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "model": args.model, "heldout_prompts": len(respond.read_responses(after)["heldout"]),
            "reward_before": r("reward_reference_mean"),
            "reward_before_ci95": [r("reward_reference_ci_low"), r("reward_reference_ci_high")],
            "reward_after": r("reward_policy_mean"),
            "reward_after_ci95": [r("reward_policy_ci_low"), r("reward_policy_ci_high")],
            "gain": r("reward_diff_mean"), "gain_ci95": [r("reward_diff_ci_low"), r("reward_diff_ci_high")],
            "kl_k3": r("kl_k3_mean"), "kl_k3_ci95": [r("kl_k3_ci_low"), r("kl_k3_ci_high")],
            "kl_k1": r("kl_k1_mean"), "length_before": r("length_heldout_reference_mean"),
            "length_after": r("length_heldout_policy_mean"), "length_drift": r("length_drift_ratio"),
            "train_first3": res.metrics.get("train_score_first3", res.metrics.get("train_reward_first3")),
            "train_last3": res.metrics.get("train_score_last3", res.metrics.get("train_reward_last3")),
            "per_iteration": per_iteration(res.path), "kl_target": args.kl_target if algo == "ppo" else None,
            "wall_s": round(time.time() - start, 1), "artifact": res.path}), flush=True)


if __name__ == "__main__":
    main()
