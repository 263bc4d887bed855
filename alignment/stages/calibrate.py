"""The judge's own accuracy: a pairwise judge asked about pairs whose better answer is known.

Keyed on the judge (model, engine, criterion, tie margin), its template and the calibration data, so it
runs once per judge and every evaluation reuses it. Accuracy is the share of pairs where the judge
prefers the known better answer (ties count ½), with a bootstrap 95% interval; the judge is
`meaningful` when that interval clears chance (0.5). ``evaluate`` reports it beside every judged
number and, by default, skips judging altogether when the judge is at chance. Output:
``verdicts.jsonl`` (per pair: P(chosen better), P(first shown picked), the verdict).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import CalibrateStageConfig
from alignment.data import load_data, prompt_texts
from alignment.generation import load_engine
from alignment.judges import PairwiseJudge, win_rate
from alignment.stages.contract import RunContext, StageSpec, cli

SPEC = StageSpec(
    name="calibrate",
    config=CalibrateStageConfig,
    templates=(PairwiseJudge.template,),
    outputs={"verdicts": "verdicts.jsonl"},
    headline=("accuracy", "accuracy_ci_low", "accuracy_ci_high", "n", "meaningful"),
)


@dataclass
class CalibrationPairs:
    questions: list[str]
    chosen: list[str]
    rejected: list[str]


def _text(messages: Any) -> str:
    return messages if isinstance(messages, str) else messages[-1]["content"]


def validate(config: CalibrateStageConfig) -> CalibrationPairs:
    rows = load_data(config.data, "preference").rows
    return CalibrationPairs(prompt_texts(rows), [_text(r["chosen"]) for r in rows], [_text(r["rejected"]) for r in rows])


def calibrate(out: Path, config: CalibrateStageConfig, pairs: CalibrationPairs, context: RunContext) -> dict[str, Any]:
    j = config.judge
    engine = load_engine(j.model, j.engine)
    try:
        judge = PairwiseJudge(engine, j.criterion, j.tie_margin)
        verdicts = judge.compare(pairs.questions, pairs.chosen, pairs.rejected)
    finally:
        engine.close()
    stats = win_rate(verdicts, config.bootstrap)
    with open(out / SPEC.outputs["verdicts"], "w", encoding="utf-8") as f:
        for q, v in zip(pairs.questions, verdicts, strict=True):
            f.write(json.dumps({"prompt": q, "p_chosen_better": round(v.p_a, 4), "p_first": round(v.p_first, 4),
                                "verdict": {"a": "chosen", "b": "rejected"}.get(v.winner, "tie")}) + "\n")
    if context.progress:
        context.progress(1.0, {})
    return {"accuracy": stats["win_rate"], "accuracy_ci_low": stats["win_rate_ci_low"],
            "accuracy_ci_high": stats["win_rate_ci_high"], "n": stats["n"], "ties": stats["ties"],
            "position_bias": stats["position_bias"], "meaningful": stats["win_rate_ci_low"] > 0.5,
            "judge_model": j.model.name, "judge_engine": engine.name, "judge_template": judge.version}


def run(config: CalibrateStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, calibrate(out, job.config, inputs, job.context))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
