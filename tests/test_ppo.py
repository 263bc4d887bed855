"""Our PPO on the tiny model: the reward for a target letter rises within a few iterations, a resumed run
equals an uninterrupted one, and the stage writes a loadable artifact (held-out answers and their
numbers are the respond and evaluate stages' job: tests/test_evaluation.py, tests/test_rlhf_flow.py)."""

import json
from pathlib import Path

import pytest
import torch

from alignment.config import PPOStageConfig
from alignment.rewards import RewardFunction

WORDS = ["cats", "dogs", "rain", "tea", "maps", "jazz", "snow", "bread"]


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Say something about {w}."}) for w in WORDS))
    return path


def ppo_config(prompt_file: Path, reward: dict | None = None, **options) -> PPOStageConfig:
    """A PPO config on `prompt_file`; keyword arguments other than `reward` are PPOOptions."""
    base = dict(adapter={"mode": "full"}, train={"learning_rate": 1e-3, "batch_size": 8}, iterations=10,
                rollout_batch=16, ppo_epochs=4, rollout={"temperature": 1.0, "max_new_tokens": 16},
                missing_eos_penalty=None, kl_coef=0.01)
    return PPOStageConfig(model={"name": "tiny-random"}, prompts={"path": str(prompt_file)},
                          reward=reward or {"rule": {"contains": "e", "mode": "count"}}, options={**base, **options})


def make_loop(config: PPOStageConfig):
    from alignment.rl.ppo import PPOLoop
    from alignment.rl.stage import load_policy

    policy, ref, tok = load_policy(config)
    chats = [[{"role": "user", "content": f"Say something about {w}."}] for w in WORDS]
    return PPOLoop(config, policy, tok, RewardFunction.load(config.reward), chats, ref_model=ref)


def test_reward_for_a_target_letter_rises(prompt_file):
    history = make_loop(ppo_config(prompt_file)).train()
    scores = [h["score"] for h in history]
    assert len(history) == 10
    # random byte-level model: about 1 'e' in 4 responses at first; PPO makes it several times as common
    assert sum(scores[-3:]) / 3 > 2 * max(sum(scores[:2]) / 2, 0.2), scores
    assert history[-1]["kl"] > 0.1, "the policy moved away from the reference"
    for key in ("entropy", "clipfrac", "value_loss", "explained_variance", "response_length", "approx_kl"):
        assert all(key in h for h in history)


def test_the_critic_learns_explained_variance_rises(prompt_file):
    """The value head starts at zero (explained variance 0, not the large negative values of a random
    head) and learns: the mean explained variance of the last iterations is clearly above the first's.
    Before the fix (a random head, vf_coef 0.1, the head at the policy's learning rate, raw scores) it
    went from -2.3 to 0.00 ± 0.01 on this task and stayed there; with only the zero start, last four
    iterations' mean -0.04."""
    history = make_loop(ppo_config(prompt_file, iterations=12)).train()
    ev = [h["explained_variance"] for h in history]
    assert ev[0] == pytest.approx(0.0, abs=1e-6), "a zero head explains nothing, and nothing negative"
    assert sum(ev[-4:]) / 4 > 0.05 and sum(ev[-4:]) / 4 > sum(ev[:4]) / 4 + 0.04, ev
    assert all(abs(h["returns_std"] - 1) < 1 for h in history), "normalised scores: returns of unit scale"


def test_critic_warmup_trains_the_value_head_alone(prompt_file):
    """During `critic_warmup` iterations the policy's weights do not move; the value head's do."""
    cfg = ppo_config(prompt_file, iterations=2, critic_warmup=1,
                     train={"learning_rate": 1e-3, "batch_size": 8, "weight_decay": 0.1})  # decay must not move it
    loop = make_loop(cfg)
    before = {k: v.clone() for k, v in loop.trainable_state().items()}
    loop.train(stop_after=1)
    after = {k: v.clone() for k, v in loop.trainable_state().items()}  # on a CPU, the live tensors otherwise
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("value_head.") for k in moved), sorted(moved)[:5]
    assert loop.history[0]["critic_warmup"] == 1.0
    loop.train()  # the policy moves once warm-up is over
    assert any(not torch.equal(after[k], v) for k, v in loop.trainable_state().items() if k.startswith("policy."))
    assert make_loop(ppo_config(prompt_file, iterations=1, critic_warmup=3)).train()[0]["critic_warmup"] == 0.0, \
        "warm-up stops one iteration short of the end: the policy always trains"


def test_first_minibatch_is_on_policy(prompt_file):
    """Old log-probs come from the same weights in the same mode: before any update the ratio is 1."""
    cfg = ppo_config(prompt_file, iterations=1, ppo_epochs=1, rollout_batch=8,
                     train={"learning_rate": 1e-12, "batch_size": 8})
    row = make_loop(cfg).train()[0]
    assert row["approx_kl"] == pytest.approx(0.0, abs=1e-6) and row["clipfrac"] == 0.0


def test_resume_from_a_checkpoint_equals_continuing(prompt_file, tmp_path):
    cfg = ppo_config(prompt_file, iterations=4, train={"learning_rate": 1e-3, "batch_size": 8, "checkpoint_every": 2})
    straight = make_loop(cfg)
    straight.train()
    first = make_loop(cfg)
    first.train(tmp_path / "ckpt", stop_after=2)
    from alignment.rl.ppo import latest_checkpoint

    ckpt = latest_checkpoint(tmp_path / "ckpt")
    assert ckpt is not None and ckpt.name == "iter-00002"
    resumed = make_loop(cfg)  # a fresh process would start like this
    resumed.load_checkpoint(ckpt)
    resumed.train(tmp_path / "ckpt")
    a, b = straight.trainable_state(), resumed.trainable_state()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert [h["score"] for h in straight.history] == [h["score"] for h in resumed.history]
    assert straight.kl.coef == resumed.kl.coef
    assert straight.moments == resumed.moments, "the reward normaliser's moments are part of the checkpoint"


def test_ppo_stage_writes_a_loadable_artifact(prompt_file, store, tmp_path):
    from alignment.stages import ppo

    cfg = ppo_config(prompt_file, iterations=3, adapter={"mode": "lora", "r": 8}, train={"learning_rate": 5e-3,
                     "batch_size": 8}, kl_target=1.0)
    res = ppo.run(cfg)
    m, path = res.metrics, Path(res.path)
    assert m["iterations"] == 3 and m["adapter"] is True and m["rollouts"] == 48
    assert m["kl_coef_final"] != 0.01, "adaptive KL controller moved the coefficient"
    assert m["train_score_last3"] is not None and m["explained_variance_last3"] is not None
    curves = [json.loads(line) for line in (path / "curves.jsonl").read_text().splitlines()]
    assert [c["iteration"] for c in curves] == [1, 2, 3]
    assert (path / "rollouts.jsonl").read_text().strip() and (path / "value_head.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(path / "model")  # the merged policy loads
    from alignment.artifacts import alignment_home

    assert not (alignment_home() / "checkpoints" / "ppo" / res.key).exists(), "checkpoints go once the artifact is committed"
    assert ppo.run(cfg).reused


def test_ppo_needs_a_reward_source(prompt_file):
    with pytest.raises(ValueError, match="no reward source"):
        PPOStageConfig(model={"name": "tiny-random"}, prompts={"path": str(prompt_file)}, reward={})


def test_missing_reward_model_is_a_clear_error_before_loading(prompt_file, store):
    from alignment.models import ModelError
    from alignment.stages import ppo

    cfg = ppo_config(prompt_file, reward={"model": {"name": "./no/such/reward-model"}})
    with pytest.raises(ModelError, match="no/such/reward-model"):
        ppo.run(cfg)
    assert not any(store.root.rglob("manifest.json"))


def test_reward_function_mixes_weighted_terms():
    from alignment.config import RewardSources

    fn = RewardFunction.load(RewardSources(rule={"contains": "cat", "mode": "count", "weight": 0.5}))
    total, terms = fn([[{"role": "user", "content": "x"}]] * 3, ["a cat", "Cat and cat", "dog"])
    assert terms["rule"] == [1.0, 2.0, 0.0] and total == [0.5, 1.0, 0.0]


@pytest.mark.skipif(not __import__("alignment.generation", fromlist=["x"]).vllm_available()
                    and not __import__("os").environ.get("CI"), reason="vLLM not installed")
def test_ppo_with_vllm_rollouts(prompt_file, store):
    """vLLM samples the rollouts and gets the LoRA policy's merged weights before each iteration."""
    from alignment.stages import ppo

    cfg = ppo_config(prompt_file, iterations=3, adapter={"mode": "lora", "r": 8},
                     train={"learning_rate": 5e-3, "batch_size": 8},
                     engine={"kind": "vllm", "max_model_len": 512})
    res = ppo.run(cfg)
    assert res.metrics["rollout_engine"] == "vllm" and res.metrics["iterations"] == 3
    curves = [json.loads(line) for line in (Path(res.path) / "curves.jsonl").read_text().splitlines()]
    assert curves[0]["kl"] == pytest.approx(0.0, abs=1e-5), "first rollout: policy == reference"
    assert len({r["response"] for r in map(json.loads, (Path(res.path) / "rollouts.jsonl").read_text().splitlines())}) > 1
