"""Reward model on real preference data: Anthropic HH-RLHF harmless-base (test split, 2,312 pairs).

    python bench/reward_hh.py [--data ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz] [--heldout 0.15]

Trains the reward stage (default model, LoRA, 1 epoch) on a seeded share of the first `--rows` pairs and
scores the rest of them (on a 2-core CPU the whole file would take hours).
Prints one JSON line: the split, held-out accuracy with its 95% bootstrap interval, and in the same
run two baselines on the same held-out pairs: chance (0.5) and "the longer answer is better"; and the
accuracy separately on pairs where the chosen answer is the longer / the shorter one (a reward model that
learned length scores well on one and badly on the other).
"""

import argparse
import json
import time

from alignment.config import RewardStageConfig
from alignment.stages import reward


def machine() -> str:
    import os
    import platform

    return f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/hh-rlhf/harmless-base-test.jsonl.gz")
    p.add_argument("--rows", type=int, default=1000, help="use the first N pairs of the file (CPU budget)")
    p.add_argument("--heldout", type=float, default=0.3)
    p.add_argument("--max-length", type=int, default=160, help="longer training pairs are dropped (reported)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--adapter", default="lora", choices=["lora", "full"])
    p.add_argument("--last-turn", action="store_true",
                   help="keep only the last Human turn as the prompt (shorter rows: more pairs per CPU minute)")
    args = p.parse_args()
    data = {"path": args.data, "format": "hh_rlhf", "max_rows": args.rows}
    if args.last_turn:
        import tempfile
        from pathlib import Path

        from alignment.config import DataSpec
        from alignment.data import load_data

        rows = load_data(DataSpec(**data), "preference").rows
        path = Path(tempfile.gettempdir()) / f"hh-last-turn-{args.rows}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({**r, "prompt": r["prompt"][-1:]}, ensure_ascii=False) + "\n")
        data = {"path": str(path)}
    cfg = RewardStageConfig(model={"name": args.model}, data=data, options=dict(
        heldout_fraction=args.heldout, adapter={"mode": args.adapter},
        train={"learning_rate": args.lr, "epochs": args.epochs, "batch_size": 8, "max_length": args.max_length,
               "logging_steps": 10}))
    start = time.time()
    result = reward.run(cfg)
    m = result.metrics
    print(json.dumps({
        "bench": "reward_hh", "machine": machine(), "model": args.model, "data": args.data,
        "rows_used": args.rows, "prompt": "last human turn" if args.last_turn else "whole conversation",
        "adapter": args.adapter, "lr": args.lr, "epochs": args.epochs, "max_length": args.max_length,
        "train_pairs": m["train_pairs"], "dropped_too_long": m["dropped_too_long"],
        "heldout_pairs": m["heldout_pairs"], "heldout_accuracy": round(m["heldout_accuracy"], 4),
        "ci95": [round(m["heldout_accuracy_ci_low"], 4), round(m["heldout_accuracy_ci_high"], 4)],
        "baseline_chance": 0.5, "baseline_longer_answer": round(m["heldout_length_baseline_accuracy"], 4),
        "accuracy_where_chosen_longer": m.get("heldout_accuracy_chosen_longer"),
        "accuracy_where_chosen_shorter": m.get("heldout_accuracy_chosen_shorter"),
        "margin_median": round(m["heldout_margin_p50"], 4), "loss_first": m["loss_first"], "loss_last": m["loss_last"],
        "train_s": m["train_seconds"], "wall_s": round(time.time() - start, 1), "reused": result.reused,
        "artifact": result.path}))


if __name__ == "__main__":
    main()
