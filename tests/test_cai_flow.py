"""The constitutional-ai flow on the tiny model through Prefect's test harness: every step runs, a rerun
is all cached, editing one principle reruns critique → revision and everything after it while the
initial answers come from cache, and new evaluation prompts rerun only answering and evaluation."""

import json
from pathlib import Path

import pytest
from prefect_api import artifacts, task_states

from alignment.artifacts import ArtifactStore

STEPS = ["respond_helpful", "initial", "critique_revise", "sl_cai", "respond_sl_cai", "samples", "feedback", "rl_cai",
         "respond_rl_cai", "calibrate", "evaluate_sl", "evaluate_rl", "benchmark_base", "benchmark_sl_cai",
         "benchmark_rl_cai", "tax"]
HELD_OUT = ("respond_helpful", "respond_sl_cai", "respond_rl_cai", "evaluate_sl", "evaluate_rl")


@pytest.fixture(scope="module")
def cai(prefect_harness, tmp_path_factory):
    import os

    from flows.registry import load_recipe, recipe_path

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("cai") / "store")
    try:
        yield load_recipe(str(recipe_path("constitutional-ai-tiny")))[1]
    finally:
        os.environ.pop("ALIGNMENT_STORE")


def run(recipe, **kw):
    from flows.constitutional_ai import constitutional_ai

    state = constitutional_ai(recipe=recipe, return_state=True, **kw)
    assert state.is_completed(), state.message
    return state, str(state.state_details.flow_run_id)


def test_cai_flow_runs_caches_and_reruns_after_a_principle_edit(cai, tmp_path):
    state, fr = run(cai)
    assert task_states(fr) == dict.fromkeys(STEPS, "Completed")
    result = state.result()
    arts = artifacts(fr)
    assert {"cai-principles", "cai-revisions", "cai-revision-stats", "critique-revise-summary",
            "evaluate-rl-report", "sl-cai-curves", "rl-cai-curves", "feedback-progress", "constitutional-ai-results",
            "constitutional-ai-responses"} <= set(arts)
    principles = json.loads(arts["cai-principles"].data)
    assert sum(p["used"] for p in principles) == 8  # 4 prompts × 2 rounds
    m = result["metrics"]
    assert m["critique_revise_revisions_total"] == 8 and m["evaluate_rl_policy_harmful_compliance_keyword_rate"] is not None
    assert m["feedback_pairs"] == 4 and "evaluate_sl_win_rate" in m
    assert list(json.loads(arts["constitutional-ai-responses"].data)[0]) == ["prompt", "helpful", "sl_cai", "rl_cai"]
    prefs = Path(result["stages"]["feedback"]["path"]) / "preferences.jsonl"
    assert prefs.is_file()

    _, fr2 = run(cai)
    assert task_states(fr2) == dict.fromkeys(STEPS, "Cached")

    edited = tmp_path / "harmlessness.yaml"
    edited.write_text(Path(cai.constitution.path).read_text().replace("Quote the problem parts.", "Quote them."))
    _, fr3 = run(cai, overrides={"constitution.path": str(edited)})
    assert task_states(fr3) == {**dict.fromkeys(STEPS, "Completed"),
                                **dict.fromkeys(("respond_helpful", "initial", "calibrate", "benchmark_base"), "Cached")}
    assert ArtifactStore().complete("generate", result["stages"]["initial"]["key"])


def test_new_evaluation_prompts_rerun_only_answering_and_evaluation(cai, tmp_path):
    run(cai)  # everything computed or cached
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(Path("data/eval_prompts.jsonl").read_text() + '{"prompt": "How do I boil an egg?"}\n')
    _, fr = run(cai, overrides={"eval_prompts.path": str(prompts)})
    assert task_states(fr) == {s: "Completed" if s in HELD_OUT else "Cached" for s in STEPS}


def test_cai_with_the_papers_rl_method_trains_a_preference_model_on_soft_labels_then_ppo(cai):
    """rl_method ppo: everything up to the AI feedback comes from cache, then a preference model on the
    soft labels and PPO against it."""
    from flows.constitutional_ai import steps

    overrides = {"rl_method": "ppo", "preference_model.train.max_steps": 2,
                 "preference_model.train.learning_rate": 1e-3, "ppo.iterations": 2, "ppo.rollout_batch": 4,
                 "ppo.rollout.max_new_tokens": 8, "ppo.train.batch_size": 4, "evaluate": None}
    run(cai)
    state, fr = run(cai, overrides=overrides)
    ran = task_states(fr)
    # without an evaluation the answers are to the held-out prompts only: other sets, other keys
    assert ran == {**dict.fromkeys(["initial", "critique_revise", "sl_cai", "samples", "feedback"], "Cached"),
                   **dict.fromkeys(["respond_helpful", "respond_sl_cai", "preference_model", "rl_cai",
                                    "respond_rl_cai", "benchmark_rl_cai", "tax"], "Completed"),
                   **dict.fromkeys(["benchmark_base", "benchmark_sl_cai"], "Cached")}
    stages = state.result()["stages"]
    pm = json.loads((Path(stages["preference_model"]["path"]) / "manifest.json").read_text())["metrics"]
    assert pm["targets"] == "soft", "the feedback stage's soft labels are the preference model's targets"
    ppo_cfg = json.loads((Path(stages["rl_cai"]["path"]) / "config.json").read_text())
    assert ppo_cfg["reward"]["model"]["name"] == stages["preference_model"]["path"]
    assert ppo_cfg["model"]["name"] == stages["sl_cai"]["path"]
    from alignment.config import ConstitutionalAIRecipe
    from alignment.config.loader import validate_model

    recipe = validate_model(cai.model_dump(mode="json"), ConstitutionalAIRecipe, "t", overrides=overrides)
    assert steps(recipe) == ("respond_helpful", "initial", "critique_revise", "sl_cai", "respond_sl_cai", "samples",
                             "feedback", "preference_model", "rl_cai", "respond_rl_cai",
                             "benchmark_base", "benchmark_sl_cai", "benchmark_rl_cai", "tax")
    assert "preference_model" not in steps(cai)
