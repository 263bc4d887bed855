"""RL-CAI feedback (Bai et al. 2022, arXiv:2212.08073, §4.1): AI preference labels from a constitution.

For each prompt with two or more sampled responses, responses are paired (0 vs 1, 2 vs 3, …). For each
pair, ``principles_per_pair`` feedback principles are sampled (seeded). For each principle the feedback
model answers a multiple-choice question (``prompts/cai_feedback.jinja``: the principle's comparison
question, options (A)/(B)), after ``few_shot`` worked comparisons from the constitution's
``feedback_examples`` (the better answer's letter as the reply, its position seeded); the normalised
option probabilities are the soft label. The question is asked in both orders and averaged,
which cancels the feedback model's position bias. With ``chain_of_thought`` the model first writes its
reasoning and the label is clamped to [0.4, 0.6], as in the paper, because CoT labels are overconfident.
Labels are ensembled (mean) over the principles. Output: ``preferences.jsonl`` with prompt / chosen /
rejected, the soft label P(chosen ≻ rejected), the principle ids and the constitution hash, ready for
DPO (or, with the soft labels, a reward model).
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import FeedbackStageConfig, GenerationSpec
from alignment.constitution import Constitution, Principle, load_constitution
from alignment.data import load_data
from alignment.generation import load_engine
from alignment.generation.base import Chat
from alignment.judges import LETTERS, MultipleChoiceJudge
from alignment.prompts import render, template_version
from alignment.stages.contract import RunContext, StageSpec, cli

TEMPLATE = "cai_feedback.jinja"
SPEC = StageSpec(
    name="feedback",
    config=FeedbackStageConfig,
    templates=(TEMPLATE,),
    outputs={"preferences": "preferences.jsonl"},
    headline=("pairs", "pairs_kept", "mean_abs_margin"),
)
COT_CLAMP = (0.4, 0.6)
COT_TOKENS = 64  # reasoning written before the letters are scored


def both_orders(p_first_ab: float, p_first_ba: float) -> float:
    """P(a ≻ b) from the probability of option (A) with a shown first, and of (A) with b shown first."""
    return (p_first_ab + (1.0 - p_first_ba)) / 2


def clamp(p: float, lo: float = COT_CLAMP[0], hi: float = COT_CLAMP[1]) -> float:
    return min(max(p, lo), hi)


def ensemble(labels: list[float]) -> float:
    """Mean soft label over principles (the paper ensembles over 16 principles)."""
    return sum(labels) / len(labels)


def group_samples(rows: list[dict]) -> list[tuple[list, list[str]]]:
    """Consecutive rows with the same prompt → (prompt, [responses])."""
    groups: list[tuple[list, list[str]]] = []
    for r in rows:
        text = r["completion"][-1]["content"] if isinstance(r["completion"], list) else r["completion"]
        if groups and groups[-1][0] == r["prompt"]:
            groups[-1][1].append(text)
        else:
            groups.append((r["prompt"], [text]))
    return groups


@dataclass
class FeedbackInputs:
    constitution: Constitution
    groups: list[tuple[list, list[str]]]  # (prompt, its sampled responses)


def validate(config: FeedbackStageConfig) -> FeedbackInputs:
    constitution = load_constitution(config.constitution.path)
    if not constitution.for_feedback():
        raise ValueError(f"{config.constitution.path}: no principle has a comparison question for feedback")
    groups = group_samples(load_data(config.samples, "sft").rows)
    if any(len(r) < 2 for _, r in groups):
        raise ValueError(f"{config.samples.path}: every prompt needs two or more responses (generate with "
                         "num_samples >= 2)")
    return FeedbackInputs(constitution, groups)


def few_shot_turns(constitution: Constitution, k: int, principle: Principle, seed: str) -> Chat:
    """Worked comparisons as earlier turns: the question over an example's two answers (order seeded),
    answered with the better one's letter."""
    examples = constitution.feedback_examples
    rng = random.Random(seed)
    turns: Chat = []
    for ex in rng.sample(examples, min(k, len(examples))):
        better_first = rng.random() < 0.5
        options = [ex.better, ex.worse] if better_first else [ex.worse, ex.better]
        question = principle.render("comparison", prompt=ex.prompt, response="")
        turns += [{"role": "user", "content": render(TEMPLATE, prompt=ex.prompt, question=question, options=options,
                                                      reasoning="", think=False)},
                  {"role": "assistant", "content": LETTERS[0 if better_first else 1]}]
    return turns


def label(config: FeedbackStageConfig, constitution: Constitution, judge: MultipleChoiceJudge, engine,
          items: list[tuple[list, str, str]], principles: list[list[Principle]]) -> list[list[float]]:
    """Per pair, the soft label P(a ≻ b) under each of its principles (both orders, optional CoT clamp)."""
    asks, prefixes, index = [], [], []
    for k, ((prompt, a, b), ps) in enumerate(zip(items, principles, strict=True)):
        for p in ps:
            q = p.render("comparison", prompt=prompt[-1]["content"], response="")
            shots = few_shot_turns(constitution, config.options.few_shot, p, f"{config.options.seed}:{k}:{p.id}")
            for first, second in ((a, b), (b, a)):
                asks.append({"prompt": prompt[-1]["content"], "question": q, "options": [first, second],
                             "reasoning": "", "think": False})
                prefixes.append(shots)
                index.append(k)
    if config.options.chain_of_thought:  # the model writes its reasoning first, then the letters are scored
        chats = [pre + [{"role": "user", "content": render(TEMPLATE, **{**v, "think": True})}]
                 for pre, v in zip(prefixes, asks, strict=True)]
        thoughts = [c.text for c in engine.generate(chats, GenerationSpec(max_new_tokens=COT_TOKENS))]
        asks = [{**v, "reasoning": t} for v, t in zip(asks, thoughts, strict=True)]
    probs = judge.choose(asks, 2, prefixes)
    out: list[list[float]] = [[] for _ in items]
    for j in range(0, len(probs), 2):
        p = both_orders(probs[j][0], probs[j + 1][0])
        out[index[j]].append(clamp(p) if config.options.chain_of_thought else p)
    return out


def feedback(out: Path, config: FeedbackStageConfig, inputs: FeedbackInputs, context: RunContext) -> dict[str, Any]:
    constitution, groups = inputs.constitution, inputs.groups
    pool = constitution.for_feedback()
    items = [(prompt, rs[i], rs[i + 1]) for prompt, rs in groups for i in range(0, len(rs) - 1, 2)]
    principles = [random.Random(f"{config.options.seed}:{k}").sample(pool, min(config.options.principles_per_pair, len(pool)))
                  for k in range(len(items))]
    engine = load_engine(config.options.judge.model, config.options.judge.engine)
    try:
        per_principle = label(config, constitution, MultipleChoiceJudge(engine, TEMPLATE), engine, items, principles)
    finally:
        engine.close()
    kept = dropped = identical = 0
    with open(out / SPEC.outputs["preferences"], "w", encoding="utf-8") as f:
        for (prompt, a, b), ps, labels in zip(items, principles, per_principle, strict=True):
            if a.strip() == b.strip():
                identical += 1
                continue
            p = ensemble(labels)
            if abs(p - 0.5) <= config.options.min_margin:
                dropped += 1
                continue
            chosen, rejected, soft = (a, b, p) if p >= 0.5 else (b, a, 1 - p)
            f.write(json.dumps({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                                "rejected": [{"role": "assistant", "content": rejected}], "soft_label": soft,
                                "labels": dict(zip([q.id for q in ps], labels, strict=True)),
                                "constitution_hash": constitution.hash,
                                "template": template_version(TEMPLATE), "few_shot": config.options.few_shot,
                                "chain_of_thought": config.options.chain_of_thought}, ensure_ascii=False) + "\n")
            kept += 1
    softs = [ensemble(labels) for labels in per_principle]
    return {"pairs": len(items), "pairs_kept": kept, "pairs_dropped_margin": dropped, "pairs_identical": identical,
            "mean_abs_margin": sum(abs(s - 0.5) for s in softs) / max(len(softs), 1),
            "constitution_hash": constitution.hash, "judge_model": config.options.judge.model.name}


def run(config: FeedbackStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, feedback(out, job.config, inputs, job.context))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
