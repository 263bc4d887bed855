"""One process vs `accelerate launch` with several, for the SFT stage, measured in one run on this machine.

    python bench/launch.py [--model smollm2-135m-instruct] [--steps 8] [--profiles ddp zero2]

Every run trains the same number of steps at the same global batch (8 rows: 8 × 1 process, 4 × 2
processes), LoRA, on data/sft_train.jsonl, each with a fresh artifact (a refresh salt), in its own store.
Prints one JSON line per run: the trainer's own time (`train_s`), rows per second of training, the whole
stage's wall time (loading, the launch, saving), and the ratios to the one-process run (the baseline,
measured first in the same run). On a machine with fewer cores than processes the ranks share cores,
so expect no gain there; the numbers are for comparing the launch overhead and scaling where there are.
"""

import argparse
import json
import os
import platform
import tempfile
import time
import uuid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--profiles", nargs="+", default=["ddp", "zero2"])
    args = p.parse_args()
    os.environ["ALIGNMENT_STORE"] = tempfile.mkdtemp(prefix="bench-launch-")
    from alignment.config import DataSpec, LaunchSpec, ModelSpec, SFTStageConfig
    from alignment.models import resolve_model_path
    from alignment.stages import sft

    resolve_model_path(ModelSpec(name=args.model))  # fetched/converted outside the timing
    runs = [("one process", None, 8)] + [(f"{p} × 2", LaunchSpec(accelerate_config=f"alignment/launch_profiles/{p}.yaml", num_processes=2), 4)
                                          for p in args.profiles]
    base = None
    for label, launch, batch in runs:
        cfg = SFTStageConfig(model={"name": args.model}, data=DataSpec(path="data/sft_train.jsonl"),
                             refresh_token=uuid.uuid4().hex, options=dict(
                                 launch=launch, train={"max_steps": args.steps, "batch_size": batch, "max_length": 192,
                                                       "logging_steps": 1}))
        t0 = time.perf_counter()
        result = sft.run(cfg)
        wall = time.perf_counter() - t0
        m, manifest = result.metrics, result.manifest()
        rows_per_s = args.steps * 8 / m["train_seconds"]
        row = {"bench": "launch.sft", "run": label, "machine": f"{platform.machine()} {os.cpu_count()} cores",
               "model": args.model, "processes": manifest["launch"].get("num_processes", 1),
               "distributed_type": manifest["launch"].get("distributed_type", "NO"), "steps": m["steps"],
               "global_batch": 8, "train_s": round(m["train_seconds"], 2), "rows_per_s": round(rows_per_s, 3),
               "stage_wall_s": round(wall, 2), "loss_first": m["loss_first"], "loss_last": m["loss_last"]}
        if base is None:
            base = row
        row["train_speed_vs_one_process"] = round(rows_per_s / base["rows_per_s"], 3)
        row["wall_vs_one_process"] = round(wall / base["stage_wall_s"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
