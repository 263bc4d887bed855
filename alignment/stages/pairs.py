"""On-policy preference pairs, the labelling step of iterative (online) DPO: a policy's sampled responses
(the `generate` stage with ``num_samples`` ≥ 2) are scored by the reward sources (a reward model, a rule,
an LLM judge's P(Yes), or their weighted sum: ``alignment.rewards``), and for each prompt the best-scored
response becomes `chosen` and the worst `rejected` (ties never make a pair) (Xiong et al. 2024, "Iterative Preference Learning
from Human Feedback"; Dong et al. 2024, "RLHF Workflow"). Pairs whose score gap is under ``min_margin``,
and prompts whose responses are all the same text, are dropped and counted.

Output: ``preferences.jsonl`` (prompt / chosen / rejected with both scores and the margin: what the DPO
stage reads) and ``scores.jsonl`` (every response with its score and each reward term).
"""

import json
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import PairsStageConfig
from alignment.data import load_data
from alignment.rewards import RewardFunction
from alignment.stages.contract import RunContext, StageSpec, cli
from alignment.stages.feedback import group_samples

SPEC = StageSpec(
    name="pairs",
    config=PairsStageConfig,
    templates=lambda c: ("reward_judge.jinja",) if c.reward.judge is not None else (),  # the judge's question
    outputs={"preferences": "preferences.jsonl", "scores": "scores.jsonl"},
    headline=("prompts", "pairs_kept", "pairs_dropped_margin", "pairs_identical", "mean_margin", "mean_score"),
)


class NoPairs(ValueError):
    """No prompt gave a pair: nothing is stored (iterative DPO ends its rounds on it after round 1)."""


def validate(config: PairsStageConfig) -> list[tuple[list, list[str]]]:
    groups = group_samples(load_data(config.samples, "sft").rows)
    if short := [i for i, (_, rs) in enumerate(groups) if len(rs) < 2]:
        raise ValueError(f"{config.samples.path}: prompt {short[0] + 1} (and {len(short) - 1} more) has one response; "
                         "pairs need two or more per prompt (generate with num_samples >= 2)")
    return groups


def best_and_worst(responses: list[str], scores: list[float]) -> tuple[int, int]:
    """Indices of the best- and worst-scored responses (the first of equals, so ties are reproducible)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[0], order[-1]


def pair(out: Path, config: PairsStageConfig, groups: list[tuple[list, list[str]]], context: RunContext) -> dict[str, Any]:
    chats = [prompt for prompt, rs in groups for _ in rs]
    texts = [r for _, rs in groups for r in rs]
    reward = RewardFunction.load(config.reward)
    try:
        total, terms = reward(chats, texts)
    finally:
        reward.close()
    kept = dropped = identical = 0
    margins: list[float] = []
    at = 0
    with open(out / SPEC.outputs["preferences"], "w", encoding="utf-8") as prefs, \
         open(out / SPEC.outputs["scores"], "w", encoding="utf-8") as every:
        for prompt, responses in groups:
            scores = total[at : at + len(responses)]
            for k, (text, score) in enumerate(zip(responses, scores, strict=True)):
                every.write(json.dumps({"prompt": prompt, "sample": k, "response": text, "score": score,
                                        **{name: v[at + k] for name, v in terms.items()}}, ensure_ascii=False) + "\n")
            at += len(responses)
            best, worst = best_and_worst(responses, scores)
            if responses[best].strip() == responses[worst].strip():
                identical += 1
                continue
            margin = scores[best] - scores[worst]
            if margin <= 0 or margin < config.min_margin:  # a tie would pick `chosen` by sample order
                dropped += 1
                continue
            prefs.write(json.dumps({"prompt": prompt, "chosen": [{"role": "assistant", "content": responses[best]}],
                                    "rejected": [{"role": "assistant", "content": responses[worst]}],
                                    "chosen_score": scores[best], "rejected_score": scores[worst], "margin": margin},
                                   ensure_ascii=False) + "\n")
            kept += 1
            margins.append(margin)
    if kept == 0:
        raise NoPairs(f"pairs: none of {len(groups)} prompts gave a pair (identical responses: {identical}, "
                         f"margin under {config.min_margin}: {dropped}); lower min_margin or sample more diverse "
                         "responses (generation.temperature, num_samples)")
    if context.progress:
        context.progress(1.0, {})
    return {"prompts": len(groups), "responses": len(texts), "pairs_kept": kept, "pairs_dropped_margin": dropped,
            "pairs_identical": identical, "mean_margin": sum(margins) / len(margins),
            "mean_score": sum(total) / len(total), **{f"mean_{k}": sum(v) / len(v) for k, v in terms.items()}}


def run(config: PairsStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        groups = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, pair(out, job.config, groups, job.context))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
