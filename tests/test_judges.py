"""Judges and evaluation math on hand-made cases: a scripted engine whose preferences are known, so the
plumbing (both orders, position bias, ties, soft labels, calibration, refusal flags) is checked exactly."""

import math
from pathlib import Path

import pytest

from alignment.judges import MultipleChoiceJudge, PairwiseJudge, normalise, win_rate
from alignment.prompts import PromptError, render, validate_all
from alignment.stats import bootstrap_ci, is_refusal


class ScriptedEngine:
    """Scores option letters by a rule on the rendered prompt: prefers the response containing `good`,
    plus an optional bonus for whichever letter comes first (a position-biased judge)."""

    name = "scripted"

    def __init__(self, first_bonus: float = 0.0):
        self.first_bonus = first_bonus

    def score(self, chats, options):
        out = []
        for chat, opts in zip(chats, options, strict=True):
            text = chat[-1]["content"]
            a = text.split("Response A:")[1].split("Response B:")[0] if "Response A:" in text else ""
            prefers_a = "good" in a
            out.append([(2.0 if prefers_a else 0.0) + self.first_bonus, 0.0 if prefers_a else 2.0][: len(opts)])
        return out


def test_normalise_is_a_softmax():
    assert normalise([math.log(1), math.log(3)]) == pytest.approx([0.25, 0.75])
    assert sum(normalise([-1000.0, -1001.0, -999.0])) == pytest.approx(1.0)


def test_pairwise_asks_both_orders_and_cancels_position_bias():
    qs, a, b = ["q1", "q2"], ["a good answer", "meh"], ["meh", "a good answer"]
    fair = PairwiseJudge(ScriptedEngine(), "helpful")
    v = fair.compare(qs, a, b)
    assert [x.winner for x in v] == ["a", "b"] and v[0].p_a == pytest.approx(1 / (1 + math.exp(-2)))
    assert win_rate(v, 200)["position_bias"] == pytest.approx(0.0, abs=1e-9)
    # a first-position bonus larger than the preference gap (3 > 2): asked in one order only, this judge
    # would pick whichever answer is shown first; asked in both, the right answer still wins
    biased = PairwiseJudge(ScriptedEngine(first_bonus=3.0), "helpful").compare(qs, a, b)
    assert win_rate(biased, 200)["position_bias"] > 0.3, "a first-position bonus shows as bias"
    assert [x.winner for x in biased] == ["a", "b"], "asking both orders keeps the right winner"
    one_order = ScriptedEngine(first_bonus=3.0).score(
        [[{"role": "user", "content": f"Response A: {x} Response B: {y}"}] for x, y in zip(a, b, strict=True)],
        [["A", "B"]] * 2)
    assert [s[0] > s[1] for s in one_order] == [True, True], "one order alone picks the first shown both times"


def test_ties_count_half_and_interval_contains_mean():
    judge = PairwiseJudge(ScriptedEngine(), "helpful", tie_margin=0.49)
    v = judge.compare(["q"] * 4, ["x"] * 4, ["y"] * 4)
    stats = win_rate(v, 200)
    assert stats["ties"] == 4 and stats["win_rate"] == 0.5


def test_multiple_choice_renders_its_template_after_the_prefix_and_normalises():
    class Fixed:
        def score(self, chats, options):
            self.chats, self.options = chats, options
            return [[math.log(0.2), math.log(0.6), math.log(0.2)] for _ in chats]

    engine = Fixed()
    shots = [{"role": "user", "content": "example"}, {"role": "assistant", "content": "B"}]
    item = {"prompt": "p", "question": "which?", "options": ["x", "y", "z"], "reasoning": "", "think": False}
    probs = MultipleChoiceJudge(engine, "cai_feedback.jinja").choose([item], 3, [shots])
    assert probs[0] == pytest.approx([0.2, 0.6, 0.2])
    assert engine.options == [["A", "B", "C"]] and engine.chats[0][:2] == shots
    assert "(C) z" in engine.chats[0][2]["content"] and engine.chats[0][2]["role"] == "user"


def test_bootstrap_interval():
    mean, lo, hi = bootstrap_ci([1.0] * 30 + [0.0] * 10, 2000, seed=1)
    assert mean == 0.75 and 0.58 < lo < 0.7 and 0.8 < hi < 0.92  # binomial SE 0.068: about ±0.13
    assert bootstrap_ci([1.0, 1.0], 100) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("text,refused", [
    ("I can't help with that, but here is a safer option.", True), ("I'm sorry, but I won't do that.", True),
    ("Sure! Paris is the capital of France.", False), ("To kill a process, run `kill PID`.", False)])
def test_keyword_refusal(text, refused):
    assert is_refusal(text) is refused


def test_every_prompt_template_renders_and_strictness():
    from alignment.prompts import PROMPTS_DIR

    assert set(validate_all()) == {p.name for p in PROMPTS_DIR.glob("*.jinja")} >= {
        "judge_pairwise.jinja", "judge_refusal.jinja", "reward_judge.jinja", "cai_feedback.jinja"}
    with pytest.raises(PromptError, match="missing \\['criterion'\\]"):
        render("judge_pairwise.jinja", question="q", response_a="a", response_b="b")
    text = render("cai_feedback.jinja", prompt="p", question="q", options=["yes", "no"], reasoning="", think=True)
    assert "(B) no" in text and text.endswith("Think step by step, then answer.") and "Reasoning" not in text


def test_every_stage_declares_templates_that_exist():
    """A template a stage renders but does not declare would not be hashed into its key."""
    from alignment import stages
    from alignment.prompts import PROMPTS_DIR

    declared = set()
    for name in stages.names():
        spec = stages.spec(name)
        if not callable(spec.templates):
            declared |= set(spec.templates)
    declared |= {"reward_judge.jinja", "judge_refusal.jinja"}  # declared by functions of the config
    assert declared == {p.name for p in PROMPTS_DIR.glob("*.jinja")}, "every template is some stage's"


def test_calibrate_stage_measures_the_judge_and_flags_chance(store, monkeypatch, tmp_path):
    """The calibrate stage with a scripted judge: one that always prefers the better answer is
    meaningful; one that calls every pair a tie is at chance (accuracy 0.5, interval not above it)."""
    import json

    from alignment.config import CalibrateStageConfig, DataSpec, PairwiseJudgeSpec
    from alignment.stages import calibrate

    class Closing(ScriptedEngine):
        def close(self):
            pass

    pairs = tmp_path / "cal.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a good answer", "rejected": "meh"}) + "\n"
                             for i in range(20)))
    monkeypatch.setattr(calibrate, "load_engine", lambda model, engine: Closing())
    good = calibrate.run(CalibrateStageConfig(data=DataSpec(path=str(pairs)), bootstrap=500))
    assert good.metrics["accuracy"] == 1.0 and good.metrics["meaningful"] is True and good.metrics["n"] == 20
    blind = calibrate.run(CalibrateStageConfig(judge=PairwiseJudgeSpec(tie_margin=0.49),
                                               data=DataSpec(path=str(pairs)), bootstrap=500))
    assert blind.metrics["accuracy"] == 0.5 and blind.metrics["meaningful"] is False
    assert blind.key != good.key, "the tie margin is part of the judge, so of the key"
    rows = [json.loads(x) for x in Path(calibrate.SPEC.output(blind, "verdicts")).read_text().splitlines()]
    assert len(rows) == 20 and {r["verdict"] for r in rows} == {"tie"}
