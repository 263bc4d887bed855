"""Judges and evaluation math on hand-made cases: a scripted engine whose preferences are known, so the
plumbing (both orders, position bias, ties, soft labels, calibration, refusal flags) is checked exactly."""

import math

import pytest

from alignment.judges import MultipleChoiceJudge, PairwiseJudge, calibrate, normalise, parse_score, win_rate
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
    biased = PairwiseJudge(ScriptedEngine(first_bonus=1.0), "helpful").compare(qs, a, b)
    assert win_rate(biased, 200)["position_bias"] > 0.05, "a first-position bonus shows as bias"
    assert [x.winner for x in biased] == ["a", "b"], "asking both orders keeps the right winner"


def test_ties_count_half_and_interval_contains_mean():
    judge = PairwiseJudge(ScriptedEngine(), "helpful", tie_margin=0.49)
    v = judge.compare(["q"] * 4, ["x"] * 4, ["y"] * 4)
    stats = win_rate(v, 200)
    assert stats["ties"] == 4 and stats["win_rate"] == 0.5


def test_calibration_flags_a_judge_at_chance():
    good = PairwiseJudge(ScriptedEngine(), "helpful")
    c = calibrate(good, ["q"] * 20, ["good"] * 20, ["bad"] * 20, 500)
    assert c["accuracy"] == 1.0 and c["meaningful"]
    blind = PairwiseJudge(ScriptedEngine(), "helpful", tie_margin=0.49)
    c = calibrate(blind, ["q"] * 20, ["good"] * 20, ["bad"] * 20, 500)
    assert c["accuracy"] == 0.5 and not c["meaningful"]


def test_multiple_choice_soft_labels_sum_to_one():
    class Fixed:
        def score(self, chats, options):
            return [[math.log(0.2), math.log(0.6), math.log(0.2)] for _ in chats]

    probs = MultipleChoiceJudge(Fixed()).choose(["which?"], ["ctx"], [["x", "y", "z"]])
    assert probs[0] == pytest.approx([0.2, 0.6, 0.2])


def test_bootstrap_interval():
    mean, lo, hi = bootstrap_ci([1.0] * 30 + [0.0] * 10, 2000, seed=1)
    assert mean == 0.75 and 0.58 < lo < 0.7 and 0.8 < hi < 0.92  # binomial SE 0.068: about ±0.13
    assert bootstrap_ci([1.0, 1.0], 100) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("text,refused", [
    ("I can't help with that, but here is a safer option.", True), ("I'm sorry, but I won't do that.", True),
    ("Sure! Paris is the capital of France.", False), ("To kill a process, run `kill PID`.", False)])
def test_keyword_refusal(text, refused):
    assert is_refusal(text) is refused


def test_rubric_score_parsing():
    assert parse_score("Score: 8. Clear and correct.") == 8 and parse_score("I'd say 10/10") == 10
    assert parse_score("no number here") is None


def test_every_prompt_template_renders_and_strictness():
    assert {"judge_pairwise.jinja", "judge_choice.jinja", "judge_rubric.jinja"} <= set(validate_all())
    with pytest.raises(PromptError, match="missing \\['criterion'\\]"):
        render("judge_pairwise.jinja", question="q", response_a="a", response_b="b")
    assert "(B) no" in render("judge_choice.jinja", question="q", context="c", options=["yes", "no"])
