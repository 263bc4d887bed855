"""The iterative-dpo flow on the tiny model through Prefect's test harness: three rounds run as labelled,
cached steps chained on each other (each round samples from and trains from the previous round's
policy), the round-over-round artifacts exist, a rerun is all `Cached`, refreshing round 2 reruns round 2
and round 3 only, a fixed reference keeps the first start in later rounds, early stopping follows its
rule, and the constitutional-ai flow's `rl_method: iterative-dpo` runs rounds with the constitution's
feedback."""

import json
import math
from pathlib import Path

import pytest
from prefect_api import artifacts, task_states

PARTS = ("generate", "pairs", "dpo", "respond", "evaluate")


def round_labels(rounds: range) -> list[str]:
    return [f"round-{n}-{p}" for n in rounds for p in PARTS]


@pytest.fixture(scope="module")
def recipe(prefect_harness, tmp_path_factory):
    import os

    from flows.registry import load_recipe, recipe_path

    os.environ["ALIGNMENT_STORE"] = str(tmp_path_factory.mktemp("iterative") / "store")
    try:
        spec, loaded = load_recipe(str(recipe_path("iterative-dpo-tiny")))
        assert spec.name == "iterative-dpo"
        yield loaded
    finally:
        os.environ.pop("ALIGNMENT_STORE")


def run(recipe, **kw):
    from flows.iterative_dpo import iterative_dpo

    state = iterative_dpo(recipe=recipe, return_state=True, **kw)
    assert state.is_completed(), state.message
    return state.result(), str(state.state_details.flow_run_id)


def config_of(result: dict) -> dict:
    return json.loads((Path(result["path"]) / "config.json").read_text())


def test_rounds_chain_cache_and_a_refreshed_round_reruns_it_and_the_later_ones(recipe):
    out, fr = run(recipe)
    states = task_states(fr)
    fixed = ["respond_base", "reward", *round_labels(range(1, 4))]
    assert {k: states[k] for k in fixed} == dict.fromkeys(fixed, "Completed")
    assert set(states) - set(fixed) <= {"evaluate", "benchmark_base", "benchmark_final", "tax"}, \
        "only the best round's evaluation again (cached), and the benchmarks"
    assert states["benchmark_base"] == states["tax"] == "Completed"
    assert states["benchmark_final"] == ("Completed" if out["best_round"] else "Cached"), "no round won: the start model"

    stages = out["stages"]
    for n in (1, 2, 3):  # each round samples from and trains from the policy before it
        start = recipe.model.name if n == 1 else stages[f"round-{n - 1}-dpo"]["path"]
        assert config_of(stages[f"round-{n}-generate"])["model"]["name"] == start
        dpo = config_of(stages[f"round-{n}-dpo"])
        assert dpo["model"]["name"] == start and dpo["reference"] is None, "moving reference: the round's start"
        assert dpo["data"]["path"].startswith(stages[f"round-{n}-pairs"]["path"])
        assert config_of(stages[f"round-{n}-pairs"])["reward"]["model"]["name"] == stages["reward"]["path"]
        assert config_of(stages[f"round-{n}-generate"])["generation"]["seed"] == recipe.iterate.sampling.seed + 100 * (n - 1)
    table = out["rounds"]
    assert [r["round"] for r in table] == [1, 2, 3]
    for row in table:
        assert row["pairs_kept"] >= 1 and row["heldout_reward"] is not None and row["kl_to_start"] is not None
        assert row["heldout_reward_ci"].startswith("[") and row["seconds_to_compute"] > 0
    arts = artifacts(fr)
    assert {"iterative-dpo-rounds", "iterative-dpo-rounds-table", "round-2-dpo-summary", "round-3-evaluate-report",
            "iterative-dpo-results"} <= set(arts)
    assert "data:image/png" in arts["iterative-dpo-rounds"].data, "the round-over-round chart"

    _, fr2 = run(recipe)
    assert set(task_states(fr2).values()) == {"Cached"}

    _, fr3 = run(recipe, refresh=["round-2"])
    again = task_states(fr3)
    assert {k: again[k] for k in fixed} == {**dict.fromkeys(fixed, "Cached"),
                                           **dict.fromkeys(round_labels(range(2, 4)), "Completed")}
    assert ("evaluate" in again) == (out["best_round"] > 0), "the best round's evaluation, shown again"
    assert again.get("evaluate", "Cached") == "Cached", "... is that round's artifact, even when it was refreshed"


def test_a_fixed_reference_keeps_the_first_start_in_later_rounds(recipe):
    moving, _ = run(recipe)  # the moving-reference rounds (cached after the first test; made here when run alone)
    out, fr = run(recipe, overrides={"iterate.reference": "fixed", "iterate.rounds": 2})
    states = task_states(fr)
    assert all(states[k] == "Cached" for k in round_labels(range(1, 2))), "round 1 is the same either way"
    assert states["round-2-dpo"] == "Completed"
    dpo = config_of(out["stages"]["round-2-dpo"])
    assert dpo["reference"]["name"] == recipe.model.name
    assert dpo["model"]["name"] == out["stages"]["round-1-dpo"]["path"]
    # the reference is really used: DPO's first loss is ln 2 exactly when policy and reference are the same
    # model (the moving reference), and not when round 2 starts from round 1 but keeps the first start
    from alignment.training import read_curves

    first_loss = {name: read_curves(o["stages"]["round-2-dpo"]["path"])[0]["loss"] for name, o in
                  (("moving", moving), ("fixed", out))}
    assert first_loss["moving"] == pytest.approx(math.log(2), abs=1e-3)
    assert abs(first_loss["fixed"] - math.log(2)) > 1e-3, first_loss


def test_the_stopping_rule():
    from flows.rounds import Stopper

    def run_rule(scores, patience, min_improvement=0.0, start=0.0):
        s = Stopper(patience, min_improvement, best_score=start)
        for n, score in enumerate(scores, 1):
            if s.update(n, score):
                return n, s.best
        return None, s.best

    assert run_rule([0.1, 0.05, 0.2], patience=1) == (2, 1), "round 2 fell short of round 1: stop, keep round 1"
    assert run_rule([0.1, 0.05, 0.2], patience=2) == (None, 3), "patience 2 waits; round 3 is the new best"
    assert run_rule([0.1, 0.05, 0.08, 0.3], patience=2) == (3, 1)
    assert run_rule([0.1, 0.2], patience=1, min_improvement=0.15) == (1, 0), "0.1 is not enough over the start"
    assert run_rule([-0.1, -0.2, -0.3], patience=None) == (None, 0), "no round beat the start: it stays best"


def test_early_stopping_in_the_flow_follows_the_rule(recipe):
    """patience 1 on the rounds the first test made (cached): the flow stops where the rule says, from
    the scores it recorded, and runs no step of the rounds after that."""
    from flows.rounds import Stopper

    full, _ = run(recipe)
    start = json.loads((Path(full["stages"]["round-1-evaluate"]["path"]) / "manifest.json").read_text())[
        "metrics"]["reward_reference_mean"]
    rule, expected = Stopper(1, 0.0, best_score=start), len(full["rounds"])
    for row in full["rounds"]:
        if rule.update(row["round"], row["heldout_reward"]):
            expected = row["round"]
            break
    out, fr = run(recipe, overrides={"iterate.patience": 1})
    assert len(out["rounds"]) == expected and out["best_round"] == rule.best
    assert ("stopped after round" in out["stopped"]) == (expected < len(full["rounds"]))
    assert not any(k.startswith(f"round-{expected + 1}-") for k in task_states(fr))


def test_unknown_refresh_names_the_steps(recipe):
    from flows.iterative_dpo import iterative_dpo

    state = iterative_dpo(recipe=recipe, refresh=["round-9"], return_state=True)
    assert state.is_failed() and "unknown step 'round-9'" in state.message and "round-3" in state.message


def test_recipe_refuses_what_cannot_work():
    from pydantic import ValidationError

    from alignment.config import IterativeDPORecipe

    base = {"eval_prompts": {"path": "data/eval_prompts.jsonl"}, "prompts": {"path": "data/sft_train.jsonl"}}
    with pytest.raises(ValidationError, match="nothing labels the samples"):
        IterativeDPORecipe(**base)
    with pytest.raises(ValidationError, match="temperature: 0"):
        IterativeDPORecipe(**base, reward_model={"name": "tiny-random"}, iterate={"sampling": {"temperature": 0}})
    with pytest.raises(ValidationError, match="nothing to compare rounds by"):
        IterativeDPORecipe(**base, reward_model={"name": "tiny-random"}, evaluate=None)


def test_constitutional_ai_can_iterate_its_rl_step(prefect_harness, tmp_path, monkeypatch):
    from flows.constitutional_ai import constitutional_ai
    from flows.registry import load_recipe, recipe_path

    monkeypatch.setenv("ALIGNMENT_STORE", str(tmp_path / "store"))
    _, recipe = load_recipe(str(recipe_path("constitutional-ai-tiny")),
                            {"rl_method": "iterative-dpo", "iterate.rounds": 2, "iterate.patience": None})
    state = constitutional_ai(recipe=recipe, return_state=True)
    assert state.is_completed(), state.message
    out, states = state.result(), task_states(str(state.state_details.flow_run_id))
    parts = [f"round-{n}-{p}" for n in (1, 2) for p in ("generate", "feedback", "dpo", "respond", "evaluate")]
    assert all(states[k] == "Completed" for k in parts)
    assert not {"samples", "feedback", "rl_cai"} & set(states), "the rounds replace the single RL step"
    stages = out["stages"]
    assert config_of(stages["round-1-generate"])["model"]["name"] == stages["sl_cai"]["path"]
    assert config_of(stages["round-2-generate"])["model"]["name"] == stages["round-1-dpo"]["path"]
    assert config_of(stages["round-2-feedback"])["constitution"]["path"] == recipe.constitution.path
    best = stages[f"round-{out['best_round']}-dpo"]["path"] if out["best_round"] else stages["sl_cai"]["path"]
    assert config_of(stages["respond_rl_cai"])["model"]["name"] == best, "the best round's model is RL-CAI's"


def test_a_first_round_without_pairs_is_an_error_naming_the_recipe_keys(recipe):
    from flows.iterative_dpo import iterative_dpo

    state = iterative_dpo(recipe=recipe, overrides={"iterate.min_margin": 1e6}, return_state=True)
    assert state.is_failed() and "round 1: pairs: none of 6 prompts gave a pair" in state.message
    assert "iterate.min_margin" in state.message and "iterate.samples_per_prompt" in state.message
