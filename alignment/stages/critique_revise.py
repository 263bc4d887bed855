"""SL-CAI (Bai et al. 2022, arXiv:2212.08073, §3): repeated critique → revision with sampled principles.

For each prompt and its initial response, ``rounds`` times: sample a principle (seeded: the same seed,
prompt index and round always pick the same one), ask the model for a critique with the principle's
critique request, then for a revision with its revision request, showing ``few_shot`` worked examples
from the constitution first. The last revision is the SFT target. Degenerate revisions (empty,
unchanged from the text they revise, a copy of the critique or of a worked example, or repetitive) are
filtered and counted, per principle.

Outputs: ``revisions.jsonl`` (every prompt with all rounds and provenance: constitution hash, principle
ids, template versions, round), ``sft.jsonl`` (kept rows as prompt/completion), ``principles.json``
(statistics per principle), metrics in the manifest.
"""

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import CritiqueReviseStageConfig
from alignment.constitution import Constitution, Principle, load_constitution
from alignment.data import load_data
from alignment.generation import load_engine
from alignment.prompts import render, template_version
from alignment.stages.contract import RunContext, StageSpec, cli
from alignment.stages.generate import write_completions

TEMPLATES = ("cai_critique.jinja", "cai_revision.jinja")
SPEC = StageSpec(
    name="critique_revise",
    config=CritiqueReviseStageConfig,
    templates=TEMPLATES,
    outputs={"revisions": "revisions.jsonl", "sft": "sft.jsonl", "principles": "principles.json"},
    headline=("revisions_total", "revisions_kept", "prompts_with_revision", "filtered_empty",
              "filtered_unchanged", "filtered_copied", "filtered_repeated"),
)


@dataclass
class CritiqueInputs:
    constitution: Constitution
    rows: list[dict[str, Any]]  # initial answers: prompt/completion rows


def sample_principle(principles: list[Principle], seed: int, row: int, round_: int) -> Principle:
    """The principle for one prompt and round: reproducible, independent of batch order."""
    return random.Random(f"{seed}:{row}:{round_}").choice(principles)


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def degenerate(revision: str, previous: str, critique: str = "", examples: tuple[str, ...] = ()) -> str | None:
    """Why a revision is unusable, or None if it is fine: "empty"; "unchanged" (same as the text it
    revises); "copied" (it repeats the critique or a worked example instead of answering: small models do
    this); "repeated" (mostly one phrase over and over)."""
    text = revision.strip()
    if not text:
        return "empty"
    norm = _norm(text)
    if norm == _norm(previous):
        return "unchanged"
    if (critique and norm == _norm(critique)) or any(norm == _norm(e) for e in examples):
        return "copied"
    words = text.lower().split()
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) >= 6 and len(set(trigrams)) / len(trigrams) < 0.5:  # mostly the same phrase again
        return "repeated"
    return None


def few_shot_turns(constitution: Constitution, k: int, principle: Principle, seed: int, row: int) -> list[dict]:
    """Worked examples as earlier chat turns (conversation, critique, revision), chosen with a seed."""
    examples = constitution.critique_examples
    if not examples or k == 0:
        return []
    picked = random.Random(f"{seed}:{row}:examples").sample(range(len(examples)), min(k, len(examples)))
    turns: list[dict] = []
    for i in picked:
        ex = examples[i]
        turns += [m.model_dump() for m in ex.conversation]
        turns += [{"role": "user", "content": render("cai_critique.jinja", request=principle.critique)},
                  {"role": "assistant", "content": ex.critique},
                  {"role": "user", "content": render("cai_revision.jinja", request=principle.revision)},
                  {"role": "assistant", "content": ex.revision}]
    return turns


def validate(config: CritiqueReviseStageConfig) -> CritiqueInputs:
    constitution = load_constitution(config.constitution.path)
    if not constitution.for_revision():
        raise ValueError(f"{config.constitution.path}: no principle has a critique and revision request")
    return CritiqueInputs(constitution, load_data(config.initial, "sft").rows)


def revise(out: Path, config: CritiqueReviseStageConfig, inputs: CritiqueInputs, context: RunContext) -> dict[str, Any]:
    constitution, rows = inputs.constitution, inputs.rows
    principles = constitution.for_revision()
    prompts = [r["prompt"] for r in rows]
    current = [r["completion"][-1]["content"] if isinstance(r["completion"], list) else r["completion"] for r in rows]
    initial = list(current)
    example_texts = tuple(t for ex in constitution.critique_examples for t in (ex.critique, ex.revision))
    history: list[list[dict]] = [[] for _ in rows]
    engine = load_engine(config.model, config.options.engine)
    try:
        for rnd in range(config.options.rounds):
            chosen = [sample_principle(principles, config.options.seed, i, rnd) for i in range(len(rows))]
            base = [few_shot_turns(constitution, config.options.few_shot, p, config.options.seed, i) + list(prompts[i]) +
                    [{"role": "assistant", "content": current[i]}] for i, p in enumerate(chosen)]
            crit_chats = [b + [{"role": "user", "content": render("cai_critique.jinja", request=p.render(
                "critique", prompt=prompts[i][-1]["content"], response=current[i]))}] for i, (b, p) in enumerate(zip(base, chosen, strict=True))]
            # distinct, reproducible seeds per round and kind: reusing the initial answers' seed would
            # replay the same sampling noise for critiques and revisions
            seeded = [config.generation.model_copy(update={"seed": config.generation.seed + 2 * rnd + k}) for k in (1, 2)]
            critiques = [c.text for c in engine.generate(crit_chats, seeded[0])]
            rev_chats = [c + [{"role": "assistant", "content": crit},
                              {"role": "user", "content": render("cai_revision.jinja", request=p.render(
                                  "revision", prompt=prompts[i][-1]["content"], response=current[i]))}]
                         for i, (c, crit, p) in enumerate(zip(crit_chats, critiques, chosen, strict=True))]
            revisions = [c.text for c in engine.generate(rev_chats, seeded[1])]
            for i, (p, crit, rev) in enumerate(zip(chosen, critiques, revisions, strict=True)):
                reason = degenerate(rev, current[i], crit, example_texts)
                history[i].append({"round": rnd, "principle_id": p.id, "critique": crit, "revision": rev,
                                   "filtered": reason})
                if reason is None:
                    current[i] = rev
            if context.progress:
                context.progress((rnd + 1) / config.options.rounds, {})
    finally:
        engine.close()
    return summarise(out, config, constitution, prompts, initial, current, history)


def summarise(out: Path, config, constitution: Constitution, prompts, initial, final, history) -> dict[str, Any]:
    versions = {t: template_version(t) for t in TEMPLATES}
    per_principle: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    kept_idx = []
    with open(out / SPEC.outputs["revisions"], "w", encoding="utf-8") as f:
        for i, rounds in enumerate(history):
            for r in rounds:
                per_principle[r["principle_id"]]["used"] += 1
                per_principle[r["principle_id"]][r["filtered"] or "kept"] += 1
                reasons[r["filtered"] or "kept"] += 1
            revised = final[i] != initial[i]
            if revised:
                kept_idx.append(i)
            f.write(json.dumps({"prompt": prompts[i], "initial": initial[i], "rounds": rounds, "final": final[i],
                                "kept": revised, "constitution": constitution.name,
                                "constitution_hash": constitution.hash, "templates": versions},
                               ensure_ascii=False) + "\n")
    write_completions(out / SPEC.outputs["sft"], [prompts[i] for i in kept_idx], [final[i] for i in kept_idx],
                      [{"principle_ids": [r["principle_id"] for r in history[i]],
                        "constitution_hash": constitution.hash} for i in kept_idx])
    (out / SPEC.outputs["principles"]).write_text(json.dumps({k: dict(v) for k, v in sorted(per_principle.items())}, indent=2))
    return {"prompts": len(prompts), "rounds": config.options.rounds, "revisions_total": sum(reasons.values()),
            "revisions_kept": reasons["kept"], "filtered_empty": reasons["empty"],
            "filtered_unchanged": reasons["unchanged"], "filtered_repeated": reasons["repeated"],
            "filtered_copied": reasons["copied"],
            "prompts_with_revision": len(kept_idx), "constitution": constitution.name,
            "constitution_hash": constitution.hash, "principles_used": len(per_principle)}


def run(config: CritiqueReviseStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, revise(out, job.config, inputs, job.context))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
