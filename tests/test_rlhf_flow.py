"""The rlhf flow on the tiny model through Prefect's test harness: SFT → reward → PPO → evaluate run,
the UI artifacts exist, a rerun is all cached, `rerun reward` reruns reward and what follows, switching
the algorithm reuses SFT and the reward model, and new evaluation prompts rerun only answering and
evaluation (never PPO)."""

from pathlib import Path

import pytest
from prefect_api import artifacts, task_states

STEPS = ["respond_base", "sft", "respond_sft", "reward", "ppo", "respond_ppo", "calibrate", "evaluate",
         "benchmark_base", "benchmark_sft", "benchmark_ppo", "tax"]


def states(**changed: str) -> dict[str, str]:
    return {s: changed.get(s, "Cached") for s in STEPS}


@pytest.fixture(scope="module")
def recipe(prefect_harness, tmp_path_factory):
    import os

    from flows.registry import load_recipe, recipe_path

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("rlhf") / "store")
    try:
        spec, loaded = load_recipe(str(recipe_path("rlhf-tiny")))
        assert spec.name == "rlhf"
        yield loaded
    finally:
        os.environ.pop("ALIGNMENT_STORE")


def run(recipe, **kw):
    from flows.rlhf import rlhf

    state = rlhf(recipe=recipe, return_state=True, **kw)
    assert state.is_completed(), state.message
    return state, str(state.state_details.flow_run_id)


def test_rlhf_flow_runs_caches_and_reruns(recipe):
    state, fr = run(recipe)
    assert task_states(fr) == dict.fromkeys(STEPS, "Completed")
    out = state.result()
    m = out["metrics"]
    assert m["reward_heldout_accuracy"] is not None and m["ppo_train_score_last3"] is not None
    assert m["evaluate_reward_diff_mean"] is not None, "the trained reward model scores the held-out answers"
    assert m["evaluate_kl_k3_mean"] > 0, "KL(policy ‖ SFT) on policy samples: PPO moved the policy"
    assert {"rlhf-results", "rlhf-responses", "reward-report", "reward-curves", "ppo-curves",
            "ppo-rollouts", "evaluate-report"} <= set(artifacts(fr))
    # lineage: the reward model starts from the SFT artifact, PPO from SFT, and PPO is scored by the reward model
    import json
    from pathlib import Path

    stages = out["stages"]
    ppo_cfg = json.loads((Path(stages["ppo"]["path"]) / "config.json").read_text())
    assert ppo_cfg["model"]["name"] == stages["sft"]["path"]
    assert ppo_cfg["reward"]["model"]["name"] == stages["reward"]["path"]
    rw_cfg = json.loads((Path(stages["reward"]["path"]) / "config.json").read_text())
    assert rw_cfg["model"]["name"] == stages["sft"]["path"]

    _, fr2 = run(recipe)
    assert set(task_states(fr2).values()) == {"Cached"}

    _, fr3 = run(recipe, refresh=["reward"])
    assert task_states(fr3) == states(reward="Completed", ppo="Completed", respond_ppo="Completed", evaluate="Completed",
                                      benchmark_ppo="Completed", tax="Completed")


def test_new_evaluation_prompts_rerun_only_answering_and_evaluation(recipe, tmp_path):
    run(recipe)
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(Path("data/eval_prompts.jsonl").read_text() + '{"prompt": "What is 12 times 12?"}\n')
    _, fr = run(recipe, overrides={"eval_prompts.path": str(prompts)})
    assert task_states(fr) == states(respond_base="Completed", respond_sft="Completed", respond_ppo="Completed",
                                     evaluate="Completed")


def test_switching_the_algorithm_reuses_sft_and_reward(recipe):
    run(recipe)  # everything cached (or computed) for ppo
    _, fr = run(recipe, overrides={"algorithm": "grpo", "evaluate": None})
    # without an evaluation the SFT model answers the held-out prompts only: another respond key
    assert task_states(fr) == {"respond_base": "Cached", "sft": "Cached", "respond_sft": "Completed",
                               "reward": "Cached", "grpo": "Completed", "respond_grpo": "Completed",
                               "benchmark_base": "Cached", "benchmark_sft": "Cached", "benchmark_grpo": "Completed",
                               "tax": "Completed"}


def test_bad_recipe_fails_in_preflight_before_any_stage(recipe, tmp_path):
    from alignment.data import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "soft_label": 1.5}\n')
    with pytest.raises(DataError, match=r"line 1: field 'soft_label' is 1.5"):
        from flows.rlhf import rlhf

        rlhf(recipe=recipe, overrides={"reward.data.path": str(bad)})
