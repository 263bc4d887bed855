"""RL-CAI feedback: soft-label math against hand-computed values, and the stage with a scripted feedback
model whose option probabilities are known."""

import json
import math
from pathlib import Path

import pytest

from alignment.config import (
    ConstitutionSpec,
    DataSpec,
    EngineKind,
    EngineSpec,
    FeedbackStageConfig,
    GenerateStageConfig,
    GenerationSpec,
    JudgeSpec,
    ModelSpec,
)
from alignment.stages import feedback, generate
from alignment.stages.feedback import both_orders, clamp, ensemble, group_samples

CONSTITUTION = Path(__file__).resolve().parent.parent / "constitutions" / "harmlessness.yaml"


def test_soft_label_math():
    # a shown first: P(A) = 0.8; b shown first: P(A) = 0.4, i.e. P(a) = 0.6 → mean 0.7
    assert both_orders(0.8, 0.4) == pytest.approx(0.7)
    # a judge that always says (A) with 0.9 learns nothing: 0.5
    assert both_orders(0.9, 0.9) == pytest.approx(0.5)
    assert [clamp(p) for p in (0.05, 0.45, 0.97)] == [0.4, 0.45, 0.6]
    assert ensemble([0.7, 0.6, 0.2]) == pytest.approx(0.5)


def test_group_samples_keeps_order():
    rows = [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": r}]}
            for q, r in (("x", "1"), ("x", "2"), ("y", "3"), ("y", "4"))]
    assert [(g[0][0]["content"], g[1]) for g in group_samples(rows)] == [("x", ["1", "2"]), ("y", ["3", "4"])]


class Scripted:
    """Option (A) gets log-prob from a rule: the option text containing 'safe' is preferred 3:1, plus a
    fixed first-position bonus that asking both orders must cancel."""

    name = "scripted"

    def score(self, chats, options):
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            a = text.split("(A) ")[1].split("\n")[0]
            p_a = 0.75 if "safe" in a else 0.25
            p_a = min(0.95, p_a + 0.1)  # position bias toward (A)
            out.append([math.log(p_a), math.log(1 - p_a)])
        return out

    def generate(self, chats, spec, logprobs=False):
        raise AssertionError("no generation without chain of thought")

    def close(self):
        pass


@pytest.fixture
def samples(tmp_path):
    path = tmp_path / "samples.jsonl"
    rows = [("How do I pick a lock?", "Here is a safe alternative: call a locksmith.", "Insert a tension wrench."),
            ("Tell me a joke.", "Why did the chicken cross the road?", "Why did the chicken cross the road?"),
            ("Make a threat.", "I won't; a safe option is to talk it out.", "You will regret this.")]
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}],
                                        "completion": [{"role": "assistant", "content": r}]}) + "\n"
                            for q, a, b in rows for r in (a, b)))
    return DataSpec(path=str(path))


def test_feedback_stage_labels_pairs(samples, store, monkeypatch):
    monkeypatch.setattr(feedback, "load_engine", lambda *a, **k: Scripted())
    cfg = FeedbackStageConfig(samples=samples, constitution=ConstitutionSpec(path=str(CONSTITUTION)),
                              options={"principles_per_pair": 3})
    r = feedback.run(cfg)
    assert r.metrics["pairs"] == 3 and r.metrics["pairs_identical"] == 1 and r.metrics["pairs_kept"] == 2
    prefs = [json.loads(x) for x in Path(Path(r.path) / "preferences.jsonl").read_text().splitlines()]
    # with 'safe' first: P(A)=0.85; with it second: P(A)=0.35 → P(safe ≻ other) = (0.85 + 0.65) / 2 = 0.75
    assert all(p["soft_label"] == pytest.approx(0.75) for p in prefs)
    assert all("safe" in p["chosen"][0]["content"] for p in prefs)
    assert len(prefs[0]["labels"]) == 3 and prefs[0]["constitution_hash"]
    from alignment.config import DataSpec as D
    from alignment.data import load_data

    assert len(load_data(D(path=str(Path(r.path) / "preferences.jsonl")), "preference").rows) == 2, "DPO-ready"
    strict = feedback.run(cfg.model_copy(update={"options": cfg.options.model_copy(update={"min_margin": 0.3})}))
    assert strict.metrics["pairs_kept"] == 0 and strict.metrics["pairs_dropped_margin"] == 2


def test_feedback_shows_the_constitutions_worked_comparisons_first(samples, store, monkeypatch):
    """few_shot: the constitution's feedback example as earlier turns, answered with the letter of its
    better answer (whose position is seeded); few_shot 0 asks the question alone."""
    from alignment.constitution import load_constitution

    example = load_constitution(CONSTITUTION).feedback_examples[0]
    seen = []

    class Recording(Scripted):
        def score(self, chats, options):
            seen.extend(chats)
            return super().score(chats, options)

    monkeypatch.setattr(feedback, "load_engine", lambda *a, **k: Recording())
    feedback.run(FeedbackStageConfig(samples=samples, options=dict(principles_per_pair=2)))
    assert seen and all(len(c) == 3 and [m["role"] for m in c] == ["user", "assistant", "user"] for c in seen)
    for shot_q, shot_a, _ in seen:
        assert example.prompt in shot_q["content"]
        better = shot_q["content"].split(f"({shot_a['content']}) ")[1].split("\n")[0]
        assert better == example.better, "the reply names the better answer's letter"
    assert {c[1]["content"] for c in seen} == {"A", "B"}, "the better answer is not always first"
    seen.clear()
    feedback.run(FeedbackStageConfig(samples=samples, options=dict(principles_per_pair=2, few_shot=0)))
    assert seen and all(len(c) == 1 for c in seen)


def test_chain_of_thought_labels_are_clamped(samples, store, monkeypatch):
    class Thinking(Scripted):
        def generate(self, chats, spec, logprobs=False):
            from alignment.generation.base import Completion

            return [Completion(text="The first option is safer.") for _ in chats]

        def score(self, chats, options):
            assert all("Reasoning: The first option is safer." in c[-1]["content"] for c in chats)
            return [[math.log(0.99), math.log(0.01)] if "safe" in c[-1]["content"].split("(A) ")[1].split("\n")[0]
                    else [math.log(0.01), math.log(0.99)] for c in chats]

    monkeypatch.setattr(feedback, "load_engine", lambda *a, **k: Thinking())
    cfg = FeedbackStageConfig(samples=samples, options=dict(chain_of_thought=True, principles_per_pair=2))
    prefs = [json.loads(x) for x in Path(Path(feedback.run(cfg).path) / "preferences.jsonl").read_text().splitlines()]
    assert all(p["soft_label"] == pytest.approx(0.6) for p in prefs), "0.99 clamps to 0.6"


def test_generate_several_samples_and_feedback_on_tiny_model(store):
    with pytest.raises(ValueError, match="needs generation.temperature > 0"):
        GenerateStageConfig(prompts=DataSpec(path="data/redteam_prompts.jsonl"), num_samples=2)
    hf = EngineSpec(kind=EngineKind.hf)
    g = generate.run(GenerateStageConfig(
        model=ModelSpec(name="tiny-random"), engine=hf, num_samples=2,
        prompts=DataSpec(path="data/redteam_prompts.jsonl", max_rows=3),
        generation=GenerationSpec(max_new_tokens=6, temperature=1.0)))
    assert g.metrics["samples_per_prompt"] == 2 and len((Path(g.path) / "completions.jsonl").read_text().splitlines()) == 6
    r = feedback.run(FeedbackStageConfig(samples=DataSpec(path=str(Path(g.path) / "completions.jsonl")),
                                         options={"judge": JudgeSpec(model=ModelSpec(name="tiny-random"), engine=hf),
                                                  "principles_per_pair": 2}))
    assert r.metrics["pairs"] == 3 and 0 <= r.metrics["mean_abs_margin"] <= 0.5
