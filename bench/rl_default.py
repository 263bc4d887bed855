"""PPO and GRPO (or RLOO) on the default model against a trained reward model, on this machine.

    python bench/rl_default.py --reward-model <reward artifact dir> [--algorithms ppo grpo]

Prompts: ``data/redteam_train.jsonl`` for training and ``data/redteam_prompts.jsonl`` held out (harmful
requests, where a harmlessness reward model such as the one ``bench/reward_hh.py`` trains on HH-RLHF has
something to say). For each algorithm one JSON line: the held-out reward of the start model (the
baseline, measured in the same run) and of the trained policy with 95% intervals, the paired gain, KL to
the reference on policy samples, length drift, and wall time. The same number of sampled responses per
algorithm: PPO 16 prompts × 1 response per iteration, GRPO/RLOO 4 prompts × 4 responses per step.
"""

import argparse
import json
import os
import platform
import time

from alignment.config import GRPOStageConfig, PPOStageConfig, RLOOStageConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reward-model", required=True)
    p.add_argument("--algorithms", nargs="+", default=["ppo", "grpo"])
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--model", default="smollm2-135m-instruct")
    args = p.parse_args()
    common = {"model": {"name": args.model}, "prompts": {"path": "data/redteam_train.jsonl"},
              "eval_prompts": {"path": "data/redteam_prompts.jsonl"}, "reward": {"model": {"name": args.reward_model}},
              "generation": {"max_new_tokens": 48}, "rollout": {"temperature": 1.0, "max_new_tokens": 48}}
    configs = {
        # no missing-EOS penalty here: at 48 new tokens most answers are cut, and the penalty would make
        # "stop early" the main thing learned; the held-out numbers are the reward model's alone either way
        "ppo": PPOStageConfig(**common, iterations=args.iterations, rollout_batch=16, ppo_epochs=2, kl_coef=0.05,
                              missing_eos_penalty=None, train={"learning_rate": 1e-4, "batch_size": 8}),
        "grpo": GRPOStageConfig(**common, num_generations=4, beta=0.04,
                                train={"learning_rate": 1e-4, "batch_size": 16, "max_steps": args.iterations,
                                       "logging_steps": 1}),
        "rloo": RLOOStageConfig(**common, num_generations=4, beta=0.05,
                                train={"learning_rate": 1e-4, "batch_size": 16, "max_steps": args.iterations,
                                       "logging_steps": 1}),
    }
    for algo in args.algorithms:
        from importlib import import_module

        start = time.time()
        res = import_module(f"alignment.stages.{algo}").run(configs[algo])
        m = res.metrics
        r = lambda k, m=m: round(m[k], 4)  # noqa: E731
        print(json.dumps({
            "bench": f"rl_default.{algo}", "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "model": args.model, "heldout_prompts": m["heldout_prompts"],
            "reward_before": r("heldout_reward_before_mean"),
            "reward_before_ci95": [r("heldout_reward_before_ci_low"), r("heldout_reward_before_ci_high")],
            "reward_after": r("heldout_reward_after_mean"),
            "reward_after_ci95": [r("heldout_reward_after_ci_low"), r("heldout_reward_after_ci_high")],
            "gain": r("heldout_reward_gain_mean"), "gain_ci95": [r("heldout_reward_gain_ci_low"), r("heldout_reward_gain_ci_high")],
            "kl_k3": r("heldout_kl_k3_mean"), "kl_k3_ci95": [r("heldout_kl_k3_ci_low"), r("heldout_kl_k3_ci_high")],
            "kl_k1": r("heldout_kl_k1_mean"), "length_before": r("heldout_length_before"),
            "length_after": r("heldout_length_after"), "length_drift": r("heldout_length_drift_ratio"),
            "train_first3": m.get("train_score_first3", m.get("train_reward_first3")),
            "train_last3": m.get("train_score_last3", m.get("train_reward_last3")),
            "wall_s": round(time.time() - start, 1), "artifact": res.path}), flush=True)


if __name__ == "__main__":
    main()
