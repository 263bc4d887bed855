"""The sft-to-dpo flow through Prefect's test harness on the tiny model: caching across runs, partial
reruns, refresh, artifacts read back through the client, and bad input stopped before any stage."""

import json
import shutil
from pathlib import Path

import pytest
from prefect_api import artifacts, task_states

from alignment.artifacts import ArtifactStore

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def harness(prefect_harness, tmp_path_factory):
    import os

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("flow") / "store")
    try:
        yield
    finally:
        os.environ.pop("ALIGNMENT_STORE")


@pytest.fixture(scope="module")
def runs():
    return {}


def run(recipe, **kwargs):
    from flows.sft_to_dpo import sft_to_dpo

    state = sft_to_dpo(recipe=recipe, return_state=True, **kwargs)
    return state, str(state.state_details.flow_run_id)


def test_first_run_computes_every_stage_and_publishes_artifacts(harness, runs, tiny_recipe):
    state, fr = run(tiny_recipe)
    assert state.is_completed(), state.message
    assert task_states(fr) == {"baseline": "Completed", "sft": "Completed", "dpo": "Completed", "evaluate": "Completed"}
    result = state.result()
    runs["first"] = result
    for stage in ("baseline", "sft", "dpo", "evaluate"):
        assert ArtifactStore().complete(stage, result["stages"][stage]["key"])
    arts = artifacts(fr)
    assert {"baseline-summary", "sft-summary", "dpo-summary", "sft-curves", "dpo-curves", "sft-progress",
            "dpo-progress", "sft-to-dpo-responses", "sft-to-dpo-results", "evaluate-report",
            "evaluate-summary"} <= set(arts)
    assert "win rate, policy vs reference" in arts["evaluate-report"].data
    assert "not meaningful" in arts["evaluate-report"].data, "a random judge is flagged"
    table = json.loads(arts["sft-to-dpo-responses"].data)
    assert len(table) == 4 and set(table[0]) == {"prompt", "base", "sft", "dpo"}
    assert table[0]["prompt"] == "What is the capital of France?"
    assert arts["sft-progress"].data == 100
    dpo_md = arts["dpo-summary"].data
    assert "heldout_rewards_accuracies" in dpo_md and result["stages"]["dpo"]["key"] in dpo_md
    assert "rewards/margins" in arts["dpo-curves"].data and "data:image/png;base64," in arts["dpo-curves"].data


def test_rerun_with_nothing_changed_is_all_cached(harness, runs, tiny_recipe):
    state, fr = run(tiny_recipe)
    assert task_states(fr) == {"baseline": "Cached", "sft": "Cached", "dpo": "Cached", "evaluate": "Cached"}
    assert state.result()["stages"] == {s: {**v, "status": "Cached"} for s, v in runs["first"]["stages"].items()}
    assert {"sft-summary", "dpo-curves", "sft-to-dpo-responses"} <= set(artifacts(fr)), "artifacts on cached runs too"
    assert "# sft: Cached" in artifacts(fr)["sft-summary"].data


def test_changing_a_dpo_setting_reruns_only_dpo(harness, runs, tiny_recipe):
    state, fr = run(tiny_recipe, overrides={"dpo.beta": 0.2})
    assert task_states(fr) == {"baseline": "Cached", "sft": "Cached", "dpo": "Completed", "evaluate": "Completed"}
    assert state.result()["stages"]["dpo"]["key"] != runs["first"]["stages"]["dpo"]["key"]


def test_changing_sft_data_reruns_sft_then_dpo(harness, runs, tiny_recipe):
    state, fr = run(tiny_recipe, overrides={"sft.data.max_rows": 12})
    assert task_states(fr) == {"baseline": "Cached", "sft": "Completed", "dpo": "Completed", "evaluate": "Completed"}
    stages = state.result()["stages"]
    assert stages["sft"]["key"] != runs["first"]["stages"]["sft"]["key"]
    dpo_manifest = json.loads((Path(stages["dpo"]["path"]) / "manifest.json").read_text())
    assert dpo_manifest["inputs"]["model"]["artifact"] == f"sft/{stages['sft']['key']}"


def test_refresh_forces_a_stage_and_what_follows(harness, runs, tiny_recipe):
    state, fr = run(tiny_recipe, refresh=["dpo"])
    assert task_states(fr) == {"baseline": "Cached", "sft": "Cached", "dpo": "Completed", "evaluate": "Completed"}
    new = state.result()["stages"]["dpo"]
    assert new["key"] != runs["first"]["stages"]["dpo"]["key"], "a refreshed stage gets a new artifact"
    assert Path(runs["first"]["stages"]["dpo"]["path"]).is_dir(), "the earlier artifact is kept"


def test_deleted_artifact_is_rebuilt_not_served_from_cache(harness, runs, tiny_recipe):
    sft = runs["first"]["stages"]["sft"]
    shutil.rmtree(sft["path"])
    state, fr = run(tiny_recipe)
    assert task_states(fr) == {"baseline": "Cached", "sft": "Completed", "dpo": "Cached", "evaluate": "Cached"}
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
