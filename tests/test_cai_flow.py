"""The constitutional-ai flow on the tiny model through Prefect's test harness: every step runs, a rerun
is all cached, and editing one principle reruns critique → revision and everything after it while the
initial answers come from cache."""

import json
from pathlib import Path

import pytest
from prefect_api import artifacts, task_states

from alignment.artifacts import ArtifactStore

pytestmark = pytest.mark.filterwarnings("ignore")
STEPS = ["initial", "critique_revise", "sl_cai", "samples", "feedback", "rl_cai", "evaluate_sl", "evaluate_rl"]


@pytest.fixture(scope="module")
def cai(prefect_harness, tmp_path_factory):
    import os

    from alignment.recipes import recipe_path
    from flows.registry import load_recipe

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
            "evaluate-rl-report", "sl-cai-curves", "rl-cai-curves", "feedback-progress"} <= set(arts)
    principles = json.loads(arts["cai-principles"].data)
    assert sum(p["used"] for p in principles) == 8  # 4 prompts × 2 rounds
    assert "harmful_compliance_rate" in " ".join(result["metrics"]) and result["metrics"]["revisions_total"] == 8
    prefs = Path(result["stages"]["feedback"]["path"]) / "preferences.jsonl"
    assert prefs.is_file()

    _, fr2 = run(cai)
    assert task_states(fr2) == dict.fromkeys(STEPS, "Cached")

    edited = tmp_path / "harmlessness.yaml"
    edited.write_text(Path(cai.constitution.path).read_text().replace("Quote the problem parts.", "Quote them."))
    _, fr3 = run(cai, overrides={"constitution.path": str(edited)})
    assert task_states(fr3) == {"initial": "Cached", **dict.fromkeys(STEPS[1:], "Completed")}
    assert ArtifactStore().complete("generate", result["stages"]["initial"]["key"])
