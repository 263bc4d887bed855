"""The rlhf flow on the tiny model through Prefect's test harness: SFT → reward → PPO → evaluate run,
the UI artifacts exist, a rerun is all cached, `rerun reward` reruns reward and what follows, and
switching the algorithm reuses SFT and the reward model."""

import pytest
from prefect_api import artifacts, task_states

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def recipe(prefect_harness, tmp_path_factory):
    import os

    from alignment.recipes import recipe_path
    from flows.registry import load_recipe

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("rlhf") / "store")
    try:
        flow, loaded = load_recipe(str(recipe_path("rlhf-tiny")))
        assert flow == "rlhf"
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
    assert task_states(fr) == dict.fromkeys(["baseline", "sft", "reward", "ppo", "evaluate"], "Completed")
    out = state.result()
    m = out["metrics"]
    assert {"reward_heldout_accuracy", "ppo_heldout_reward_gain_mean", "ppo_heldout_kl_k3_mean",
            "evaluate_reward_diff_mean"} <= set(m)
    assert {"rlhf-results", "rlhf-responses", "reward-report", "reward-curves", "ppo-report", "ppo-curves",
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
    assert task_states(fr3) == {"baseline": "Cached", "sft": "Cached", "reward": "Completed", "ppo": "Completed",
                                "evaluate": "Completed"}


def test_switching_the_algorithm_reuses_sft_and_reward(recipe):
    run(recipe)  # everything cached (or computed) for ppo
    _, fr = run(recipe, overrides={"algorithm": "grpo", "evaluate": None})
    assert task_states(fr) == {"baseline": "Cached", "sft": "Cached", "reward": "Cached", "grpo": "Completed"}


def test_bad_recipe_fails_in_preflight_before_any_stage(recipe, tmp_path):
    from alignment.data import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "soft_label": 1.5}\n')
    with pytest.raises(DataError, match=r"line 1: field 'soft_label' is 1.5"):
        from flows.rlhf import rlhf

        rlhf(recipe=recipe, overrides={"reward.data.path": str(bad)})
