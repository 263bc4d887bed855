"""The evaluate stage on the tiny model, from two `respond` artifacts: judged numbers skipped when the
judge's calibration says it is at chance (without loading the judge) and computed when forced; reward
scores and KL(policy ‖ reference) against a locally built reward model and a perturbed copy of the model;
mismatched answer sets refused before anything is written."""

import json
from pathlib import Path

import pytest
import torch

from alignment.config import (
    ArtifactRef,
    CalibrateStageConfig,
    DataSpec,
    EvaluateStageConfig,
    ModelSpec,
    PairwiseJudgeSpec,
    RespondStageConfig,
)
from alignment.models import resolve_model_path
from alignment.stages import calibrate, evaluate, respond

TINY = ModelSpec(name="tiny-random")
JUDGE = PairwiseJudgeSpec(model=TINY, engine={"kind": "hf"})
SETS = {"heldout": DataSpec(path="data/eval_prompts.jsonl", max_rows=4),
        "redteam": DataSpec(path="data/redteam_prompts.jsonl", max_rows=3),
        "benign": DataSpec(path="data/benign_prompts.jsonl", max_rows=3)}


def answers(model: ModelSpec, sets=SETS) -> str:
    return respond.run(RespondStageConfig(model=model, sets=sets, generation={"max_new_tokens": 6})).path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Answers of the tiny model and of a perturbed copy, the tiny judge's calibration, a reward model."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tmp = tmp_path_factory.mktemp("evaluation")
    os.environ["ALIGNMENT_STORE"] = str(tmp / "store")
    base = resolve_model_path(TINY)
    torch.manual_seed(1)
    other = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other.save_pretrained(tmp / "other")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp / "other")
    cfg = LlamaConfig.from_pretrained(base)
    cfg.num_labels = 1
    LlamaForSequenceClassification(cfg).save_pretrained(tmp / "rm")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp / "rm")
    try:
        cal = calibrate.run(CalibrateStageConfig(judge=JUDGE, data=DataSpec(path="data/judge_calibration.jsonl",
                                                                            max_rows=6), bootstrap=200))
        yield {"tiny": answers(TINY), "other": answers(ModelSpec(name=str(tmp / "other"))), "calibration": cal,
               "rm": ModelSpec(name=str(tmp / "rm"))}
    finally:
        os.environ.pop("ALIGNMENT_STORE")


def config(built, policy="other", reference="tiny", **kw) -> EvaluateStageConfig:
    return EvaluateStageConfig(policy=ArtifactRef(path=built[policy]), reference=ArtifactRef(path=built[reference]),
                               judge=JUDGE, calibration=ArtifactRef(path=built["calibration"].path), bootstrap=200, **kw)


def test_a_random_judge_is_at_chance_and_evaluate_skips_it_without_loading_it(built, monkeypatch):
    assert built["calibration"].metrics["meaningful"] is False, "a random 2-layer model cannot judge"
    monkeypatch.setattr(evaluate, "load_engine", lambda *a: pytest.fail("the judge must not be loaded"))
    r = evaluate.run(config(built))
    m = r.metrics
    assert m["judged"] is False and m["judged_note"] == "not computed: judge at chance"
    assert m["win_rate"] is None and m["reward_diff_mean"] is None and m["kl_k3_mean"] is None
    assert all(k in m for k in evaluate.SPEC.headline)
    assert m["policy_harmful_compliance_keyword_rate"] is not None and "policy_over_refusal_judged_rate" not in m
    report = evaluate.SPEC.output(r, "report").read_text()
    assert "not computed: judge at chance" in report and "were not computed" in report
    assert "over-refusal on benign prompts (keyword)" in report and "Held-out prompts (first 4 of 4)" in report


def test_forcing_the_judge_computes_judged_numbers(built):
    r = evaluate.run(config(built, at_chance="compute"))
    m = r.metrics
    assert m["judged"] is True and m["n"] == 4 and 0 <= m["win_rate_ci_low"] <= m["win_rate"] <= m["win_rate_ci_high"] <= 1
    assert m["policy_over_refusal_judged_rate"] is not None
    rows = [json.loads(x) for x in Path(evaluate.SPEC.output(r, "comparison")).read_text().splitlines()]
    assert [x["set"] for x in rows].count("heldout") == 4 and len(rows) == 10
    assert "p_policy_better" in rows[0] and set(rows[-1]["policy_refused"]) == {"keyword", "judged"}
    assert "**are not meaningful**" in evaluate.SPEC.output(r, "report").read_text()


def test_reward_and_kl_are_zero_against_itself_and_kl_positive_against_another_model(built):
    kl = {"temperature": 1.0, "max_new_tokens": 6}
    same = evaluate.run(config(built, policy="tiny", reward_model=built["rm"], kl=kl)).metrics
    assert same["length_drift_ratio"] == pytest.approx(1.0), "same model on both sides"
    assert same["reward_diff_mean"] == pytest.approx(0.0, abs=1e-6) and same["reward_model"].endswith("rm")
    assert same["kl_k1_mean"] == pytest.approx(0.0, abs=1e-5) and same["kl_k3_mean"] == pytest.approx(0.0, abs=1e-5)
    other = evaluate.run(config(built, reward_model=built["rm"], kl=kl)).metrics
    assert other["kl_k3_mean"] > 0.01 and other["kl_k3_ci_low"] <= other["kl_k3_mean"] <= other["kl_k3_ci_high"]


def test_answers_to_different_sets_are_refused_before_anything_is_written(built, tmp_path, monkeypatch):
    only_heldout = answers(TINY, {"heldout": SETS["heldout"]})
    monkeypatch.setenv("ALIGNMENT_STORE", str(tmp_path / "empty"))
    cfg = config(built).model_copy(update={"reference": ArtifactRef(path=only_heldout)})
    with pytest.raises(ValueError, match=r"policy answered sets \['benign', 'heldout', 'redteam'\], reference \['heldout'\]"):
        evaluate.run(cfg)
    assert not (tmp_path / "empty").exists()


def test_calibration_is_reused_by_every_evaluation(built):
    again = calibrate.run(CalibrateStageConfig(judge=JUDGE, data=DataSpec(path="data/judge_calibration.jsonl",
                                                                          max_rows=6), bootstrap=200))
    assert again.reused and again.key == built["calibration"].key
    assert Path(again.path, "verdicts.jsonl").read_text().count("\n") == 6
