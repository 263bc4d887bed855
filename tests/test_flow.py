"""The sft-to-dpo flow through Prefect's test harness on the tiny model: caching across runs, partial
reruns (a training setting, the evaluation prompts, a judge setting), refresh, artifacts read back through
the client, and bad input stopped before any step."""

import json
import shutil
from pathlib import Path

import pytest
from prefect_api import artifacts, log_lines, task_states

from alignment.artifacts import ArtifactStore

STEPS = ["respond_base", "sft", "respond_sft", "dpo", "respond_dpo", "calibrate", "evaluate", "benchmark_base",
         "benchmark_sft", "benchmark_dpo", "tax"]


def states(**changed: str) -> dict[str, str]:
    """Every step Cached except those named."""
    return {s: changed.get(s, "Cached") for s in STEPS}


@pytest.fixture(scope="module")
def harness(prefect_harness, tmp_path_factory):
    import os

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("flow") / "store")
    try:
        yield
    finally:
        os.environ.pop("ALIGNMENT_STORE")


@pytest.fixture(scope="module")
def runs(harness, tiny_recipe):
    """The first run of the recipe (every test may need it: each one passes alone too)."""
    state, fr = run(tiny_recipe)
    return {"first": state.result(), "first_state": state, "first_flow_run": fr}


def run(recipe, **kwargs):
    from flows.sft_to_dpo import sft_to_dpo

    state = sft_to_dpo(recipe=recipe, return_state=True, **kwargs)
    return state, str(state.state_details.flow_run_id)


def test_first_run_computes_every_stage_and_publishes_artifacts(harness, runs, tiny_recipe):
    state, fr = runs["first_state"], runs["first_flow_run"]
    assert state.is_completed(), state.message
    assert task_states(fr) == dict.fromkeys(STEPS, "Completed")
    result = runs["first"]
    for label, stage in zip(STEPS, ("respond", "sft", "respond", "dpo", "respond", "calibrate", "evaluate",
                                     "benchmark", "benchmark", "benchmark", "tax"), strict=True):
        assert ArtifactStore().complete(stage, result["stages"][label]["key"])
    arts = artifacts(fr)
    assert {"respond-base-summary", "sft-summary", "dpo-summary", "sft-curves", "dpo-curves", "sft-progress",
            "dpo-progress", "sft-to-dpo-responses", "sft-to-dpo-results", "evaluate-report", "calibrate-summary",
            "evaluate-summary", "respond-dpo-summary"} <= set(arts)
    assert "win rate, policy vs reference" in arts["evaluate-report"].data
    assert "**are not meaningful**" in arts["evaluate-report"].data, "a random judge is flagged (tiny: at_chance compute)"
    card = arts["sft-to-dpo-results"].data
    assert "calibrate_meaningful" in card and "evaluate_win_rate" in card and "dpo_heldout_rewards_accuracies" in card
    assert "## Capability benchmark and alignment tax" in card and "| facts | 6 |" in card, "the tax table on the card"
    assert "base→dpo" in card and "tax-report" in arts and "benchmark-dpo-report" in arts
    assert result["metrics"]["tax_max_drop_task"] in ("facts", "recall", "arithmetic", "instructions")
    assert set(result["metrics"]) >= {"sft_loss_first", "respond_dpo_mean_tokens", "evaluate_kl_k3_mean"}
    assert result["metrics"]["evaluate_kl_k3_mean"] is None, "no `evaluate.kl` in this recipe: not computed"
    table = json.loads(arts["sft-to-dpo-responses"].data)
    assert len(table) == 4 and list(table[0]) == ["prompt", "base", "sft", "dpo"]
    lines = log_lines(fr)
    assert any("sft: 100%" in line for line in lines), "progress lines reach the run page"
    assert not [line for line in lines if "LOAD_GLOBAL" in line or "RESUME " in line], "no bytecode listings"
    assert table[0]["prompt"] == "What is the capital of France?"
    assert arts["sft-progress"].data == 100
    dpo_md = arts["dpo-summary"].data
    assert "heldout_rewards_accuracies" in dpo_md and result["stages"]["dpo"]["key"] in dpo_md
    assert "rewards/margins" in arts["dpo-curves"].data and "data:image/png;base64," in arts["dpo-curves"].data


def test_rerun_with_nothing_changed_is_all_cached(harness, runs, tiny_recipe):
    state, fr = run(tiny_recipe)
    assert task_states(fr) == states()
    assert state.result()["stages"] == {s: {**v, "status": "Cached"} for s, v in runs["first"]["stages"].items()}
    assert {"sft-summary", "dpo-curves", "sft-to-dpo-responses"} <= set(artifacts(fr)), "artifacts on cached runs too"
    assert "# sft: Cached" in artifacts(fr)["sft-summary"].data


def test_changing_a_dpo_setting_reruns_only_dpo(harness, runs, tiny_recipe):
    state, fr = run(tiny_recipe, overrides={"dpo.beta": 0.2})
    assert task_states(fr) == states(dpo="Completed", respond_dpo="Completed", evaluate="Completed",
                                     benchmark_dpo="Completed", tax="Completed")
    assert state.result()["stages"]["dpo"]["key"] != runs["first"]["stages"]["dpo"]["key"]


def test_new_evaluation_prompts_rerun_only_answering_and_evaluation(harness, runs, tiny_recipe, tmp_path):
    """The promise: a new held-out prompt never retrains. Only the respond steps and evaluate run."""
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text(Path("data/eval_prompts.jsonl").read_text() + '{"prompt": "Name a prime number above 100."}\n')
    state, fr = run(tiny_recipe, overrides={"eval_prompts.path": str(prompts)})
    assert task_states(fr) == states(respond_base="Completed", respond_sft="Completed", respond_dpo="Completed",
                                     evaluate="Completed")
    stages = state.result()["stages"]
    for step in ("sft", "dpo", "calibrate"):
        assert stages[step]["key"] == runs["first"]["stages"][step]["key"]


def test_a_judge_setting_reruns_only_calibration_and_evaluation(harness, runs, tiny_recipe):
    _, fr = run(tiny_recipe, overrides={"evaluate.judge.criterion": "correct and concise"})
    assert task_states(fr) == states(calibrate="Completed", evaluate="Completed")


def test_changing_sft_data_reruns_sft_then_dpo(harness, runs, tiny_recipe):
    state, fr = run(tiny_recipe, overrides={"sft.data.max_rows": 12})
    assert task_states(fr) == states(sft="Completed", respond_sft="Completed", dpo="Completed",
                                     respond_dpo="Completed", evaluate="Completed", benchmark_sft="Completed",
                                     benchmark_dpo="Completed", tax="Completed")
    stages = state.result()["stages"]
    assert stages["sft"]["key"] != runs["first"]["stages"]["sft"]["key"]
    dpo_manifest = json.loads((Path(stages["dpo"]["path"]) / "manifest.json").read_text())
    assert dpo_manifest["inputs"]["model"]["artifact"] == f"sft/{stages['sft']['key']}"


def test_refresh_forces_a_stage_and_what_follows(harness, runs, tiny_recipe):
    state, fr = run(tiny_recipe, refresh=["dpo"])
    assert task_states(fr) == states(dpo="Completed", respond_dpo="Completed", evaluate="Completed",
                                     benchmark_dpo="Completed", tax="Completed")
    new = state.result()["stages"]["dpo"]
    assert new["key"] != runs["first"]["stages"]["dpo"]["key"], "a refreshed stage gets a new artifact"
    assert Path(runs["first"]["stages"]["dpo"]["path"]).is_dir(), "the earlier artifact is kept"


def test_deleted_artifact_is_rebuilt_not_served_from_cache(harness, runs, tiny_recipe):
    sft = runs["first"]["stages"]["sft"]
    shutil.rmtree(sft["path"])
    state, fr = run(tiny_recipe)
    assert task_states(fr) == states(sft="Completed")
    assert state.result()["stages"]["sft"]["key"] == sft["key"] and Path(sft["path"]).is_dir()


def test_bad_data_fails_before_any_stage_runs(harness, tiny_recipe, tmp_path):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    before = sorted(p for p in ArtifactStore().root.rglob("*"))
    state, fr = run(tiny_recipe, overrides={"dpo.data.path": str(bad), "sft.train.max_steps": 3})
    assert state.is_failed() and "prefs.jsonl line 2: preference row is missing 'rejected'" in state.message
    assert task_states(fr) == {}, "nothing ran, not even SFT"
    assert sorted(p for p in ArtifactStore().root.rglob("*")) == before


def test_unknown_parameter_key_is_rejected(harness, tiny_recipe):
    from flows.sft_to_dpo import sft_to_dpo

    params = tiny_recipe.model_dump(mode="json")
    params["dpo"]["betta"] = 0.2
    state = sft_to_dpo(recipe=params, return_state=True)
    assert state.is_failed() and "betta" in state.message and "Extra inputs are not permitted" in state.message
