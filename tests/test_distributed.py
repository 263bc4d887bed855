"""Every training stage under `accelerate launch` with 2 processes on this CPU: DDP (gloo), DeepSpeed ZeRO-2
and ZeRO-3. Each run asserts what the training process itself reported (a launch that silently fell back
to one process, or to N single-process runs, fails here), that it learned (loss falls; for GRPO/PPO the
policy's weights moved) and that the artifact loads. Marker `distributed` (about 4 minutes; CI runs it)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment import stages
from alignment.config import (
    AdapterSpec,
    DataSpec,
    DPOStageConfig,
    GRPOStageConfig,
    LaunchSpec,
    ModelSpec,
    PPOStageConfig,
    RewardSources,
    RewardStageConfig,
    SFTStageConfig,
)
from alignment.models import resolve_model_path

pytestmark = pytest.mark.distributed
INFRA = Path(__file__).resolve().parent.parent / "alignment" / "launch_profiles"
TINY = ModelSpec(name="tiny-random")
TRAIN = {"max_steps": 6, "batch_size": 4, "max_length": 96, "learning_rate": 5e-3, "logging_steps": 1}
PROFILES = {"ddp": ("MULTI_CPU", None), "zero2": ("DEEPSPEED", 2), "zero3": ("DEEPSPEED", 3)}
RL = {"model": TINY, "prompts": DataSpec(path="data/sft_train.jsonl", max_rows=8),
      "reward": RewardSources(rule={"contains": "e", "mode": "count"})}
ROLLOUT = {"temperature": 1.0, "max_new_tokens": 8}


def config(stage: str, launch: LaunchSpec):
    if stage == "sft":
        return SFTStageConfig(model=TINY, data=DataSpec(path="data/sft_train.jsonl", max_rows=32),
                              options={"train": TRAIN, "launch": launch})
    if stage == "dpo":
        return DPOStageConfig(model=TINY, data=DataSpec(path="data/pref_train.jsonl", max_rows=32),
                              eval_data=DataSpec(path="data/pref_heldout.jsonl", max_rows=8),
                              options={"train": TRAIN, "launch": launch})
    if stage == "reward":
        return RewardStageConfig(model=TINY, data=DataSpec(path="data/pref_train.jsonl", max_rows=32),
                                 eval_data=DataSpec(path="data/pref_heldout.jsonl", max_rows=8),
                                 options={"train": TRAIN, "launch": launch})
    if stage == "grpo":
        return GRPOStageConfig(**RL, options={"num_generations": 2, "train": {**TRAIN, "max_steps": 4},
                                                     "rollout": ROLLOUT, "launch": launch})
    return PPOStageConfig(**RL, options={"iterations": 3, "rollout_batch": 8, "adapter": {"mode": "full"}, "launch": launch,
                                         "rollout": ROLLOUT, "train": {"batch_size": 4, "learning_rate": 1e-3}})


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("stage", ["sft", "dpo", "reward", "grpo", "ppo"])
def test_stage_trains_in_two_processes(stage, profile, store):
    launch = LaunchSpec(accelerate_config=str(INFRA / f"{profile}.yaml"), num_processes=2)
    result = stages.runner(stage)(config(stage, launch))
    manifest = result.manifest()
    dtype, zero = PROFILES[profile]
    assert (manifest["launch"]["distributed_type"], manifest["launch"]["num_processes"]) == (dtype, 2)
    assert manifest["launch"]["zero_stage"] == zero and manifest["identity"]["launch"]["num_processes"] == 2
    model_dir = Path(result.path) / "model"
    if stage == "reward":
        from transformers import AutoModelForSequenceClassification

        assert AutoModelForSequenceClassification.from_pretrained(model_dir).config.num_labels == 1
        assert result.metrics["heldout_pairs"] == 8, "rank 0 scored the held-out pairs"
    else:
        from transformers import AutoModelForCausalLM

        assert AutoModelForCausalLM.from_pretrained(model_dir).num_parameters() > 0
    if stage in ("sft", "dpo", "reward"):
        curves = [json.loads(x) for x in (Path(result.path) / "curves.jsonl").read_text().splitlines()]
        losses = [c["loss"] for c in curves if "loss" in c]
        assert len(losses) == 6 and losses[-1] < losses[0], losses
    else:
        before, after = load_file(Path(resolve_model_path(TINY)) / "model.safetensors"), load_file(model_dir / "model.safetensors")
        assert any(not torch.equal(before[k], after[k]) for k in before), "the policy's weights moved"
    assert not any(Path(result.path).rglob("checkpoint-*")), "no trainer scratch in the artifact"


def test_full_dpo_keeps_a_reference_model_under_zero3(store):
    """Full fine-tuning: DPO's frozen reference is a second model, which TRL prepares for ZeRO-3 itself."""
    launch = LaunchSpec(accelerate_config=str(INFRA / "zero3.yaml"), num_processes=2)
    cfg = config("dpo", launch)
    cfg = cfg.model_copy(update={"options": cfg.options.model_copy(update={"adapter": AdapterSpec(mode="full")})})
    result = stages.runner("dpo")(cfg)
    manifest = result.manifest()
    assert manifest["launch"]["zero_stage"] == 3 and manifest["resolved"] == {"model.dtype": "float32"}
    assert not (Path(result.path) / "adapter").exists(), "full fine-tune: no adapter"
    before = load_file(Path(resolve_model_path(TINY)) / "model.safetensors")
    after = load_file(Path(result.path) / "model" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert result.metrics["heldout_rewards_accuracies"] is not None
