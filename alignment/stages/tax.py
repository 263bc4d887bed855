"""The alignment tax: what a chain of models (start → ... → aligned) gained or lost on the same benchmark
items, per task, as paired differences with intervals.

Each input is a ``benchmark`` artifact (``models``: labels in pipeline order, e.g. base, sft, dpo; the
first is the start, the last the aligned model). For every task they share, each item is scored 0/1 by
every model, so a change is the mean of per-item differences and its 95% interval a paired bootstrap
over items: much narrower than two independent intervals, because the items a model gets right stay
mostly the same. Reported: every model's score with its interval, each step's change (sft − base,
dpo − sft) and the whole chain's (dpo − base) with intervals, and the largest drop over tasks
(``max_drop``, positive is a loss; its interval ``max_drop_ci_low``–``max_drop_ci_high``), which a gate
can bound: ``{step: tax, metric: max_drop, op: "<=", value: 0.05}`` ("no task drops by more than 5 points").
``tasks_dropped`` counts the tasks whose whole-chain change is below zero beyond its interval.

A net change hides churn: a model can learn 27 facts and forget 15. So each task also counts the items
the start model got right and the aligned one gets wrong (``<task>_forgotten``; ``forgotten_rate``: over
all tasks, the share of what the start knew that the end lost, gateable like ``max_drop``) and those it
learned, and the report lists the forgotten items with both answers ("How many metres are in a kilometre?
base: ... 1000 metres / dpo: approximately 1.60833 meters").

Keyed on the benchmark artifacts' ids; a pure computation on their ``samples.jsonl`` (no model loads).
Output: ``tax.json`` (the table), ``report.md``.
"""

import json
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult, artifact_identity
from alignment.config import TaxStageConfig
from alignment.stages import benchmark
from alignment.stages.contract import RunContext, StageSpec, cli
from alignment.stats import bootstrap_ci

SPEC = StageSpec(
    name="tax",
    config=TaxStageConfig,
    outputs={"table": "tax.json", "report": "report.md"},
    headline=("start", "end", "tasks", "max_drop", "max_drop_task", "max_drop_ci_low", "max_drop_ci_high",
              "tasks_dropped", "forgotten", "learned", "forgotten_rate"),
    card=lambda result: card(result),
)


def validate(config: TaxStageConfig) -> dict[str, dict[str, dict[int, float]]]:
    """label → task → doc id → score; every model must have run the same items of the tasks it shares."""
    scores = {}
    for label, ref in config.models.items():
        artifact_identity(ref.path, "benchmark")
        scores[label] = benchmark.read_samples(ref.path)
    labels = list(scores)
    common = set.intersection(*(set(s) for s in scores.values()))
    if not common:
        raise ValueError(f"tax: the benchmarks of {', '.join(labels)} share no task; benchmark every model "
                         "with the same `benchmark` options")
    for task in sorted(common):
        ids = [set(scores[label][task]) for label in labels]
        if any(i != ids[0] for i in ids):
            raise ValueError(f"tax: task {task!r} was run on different items for {', '.join(labels)} (a "
                             "different `limit` or task file); benchmark every model with the same options")
    return {label: {t: s[t] for t in sorted(common)} for label, s in scores.items()}


def _paired(later: dict[int, float], earlier: dict[int, float], n_boot: int) -> dict[str, float]:
    diffs = [later[i] - earlier[i] for i in sorted(earlier)]
    mean, lo, hi = bootstrap_ci(diffs, n_boot)
    return {"change": mean, "ci_low": lo, "ci_high": hi}


def tax(out: Path, config: TaxStageConfig, scores: dict[str, dict[str, dict[int, float]]],
        context: RunContext, answers: dict[str, dict[str, dict[int, dict[str, Any]]]] | None = None) -> dict[str, Any]:
    """The table and metrics; `answers` (label → task → doc id → question and answer, for the start and
    end models) gives the report its forgotten items."""
    labels = list(scores)
    start, end = labels[0], labels[-1]
    tasks = list(scores[start])
    table: dict[str, Any] = {}
    metrics: dict[str, Any] = {"start": start, "end": end, "tasks": len(tasks)}
    for task in tasks:
        row: dict[str, Any] = {"n": len(scores[start][task]), "scores": {}, "steps": {}}
        for label in labels:
            mean, lo, hi = bootstrap_ci(list(scores[label][task].values()), config.bootstrap)
            row["scores"][label] = {"score": mean, "ci_low": lo, "ci_high": hi}
            metrics[f"{label}_{task}_score"] = mean
        for a, b in zip(labels, labels[1:], strict=False):
            row["steps"][f"{a}→{b}"] = _paired(scores[b][task], scores[a][task], config.bootstrap)
        row["total"] = _paired(scores[end][task], scores[start][task], config.bootstrap)
        metrics.update({f"{task}_change": row["total"]["change"], f"{task}_change_ci_low": row["total"]["ci_low"],
                        f"{task}_change_ci_high": row["total"]["ci_high"]})
        right = [i for i, v in scores[start][task].items() if v >= 1.0]
        row["forgotten"] = sorted(i for i in right if scores[end][task][i] < 1.0)
        row["learned"] = sorted(i for i, v in scores[start][task].items() if v < 1.0 and scores[end][task][i] >= 1.0)
        row["start_right"] = len(right)
        metrics.update({f"{task}_forgotten": len(row["forgotten"]), f"{task}_learned": len(row["learned"])})
        table[task] = row
    known = sum(table[t]["start_right"] for t in tasks)
    metrics.update({"forgotten": sum(len(table[t]["forgotten"]) for t in tasks),
                    "learned": sum(len(table[t]["learned"]) for t in tasks)})
    metrics["forgotten_rate"] = metrics["forgotten"] / known if known else 0.0
    worst = max(tasks, key=lambda t: -table[t]["total"]["change"])
    total = table[worst]["total"]
    metrics.update({"max_drop": -total["change"], "max_drop_task": worst, "max_drop_ci_low": -total["ci_high"],
                    "max_drop_ci_high": -total["ci_low"],
                    "tasks_dropped": sum(table[t]["total"]["ci_high"] < 0 for t in tasks)})
    (out / SPEC.outputs["table"]).write_text(json.dumps({"models": labels, "tasks": table}, indent=2))
    (out / SPEC.outputs["report"]).write_text(report(labels, table, metrics, answers), encoding="utf-8")
    if context.progress:
        context.progress(1.0, {})
    return metrics


def _ci(d: dict[str, float], signed: bool = False) -> str:
    v = f"{d.get('change', d.get('score')):+.3f}" if signed else f"{d['score']:.3f}"
    return f"{v} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if signed else f"{v} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def markdown_table(labels: list[str], table: dict[str, Any]) -> list[str]:
    """The per-task table (also what the flows' summary shows)."""
    steps = [f"{a}→{b}" for a, b in zip(labels, labels[1:], strict=False)]
    total = f"{labels[0]}→{labels[-1]}"
    head = ["task", "items", *labels, *steps, *([total] if len(labels) > 2 else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, row in table.items():
        cells = [task, str(row["n"]), *(_ci(row["scores"][label]) for label in labels),
                 *(_ci(row["steps"][s], signed=True) for s in steps),
                 *([_ci(row["total"], signed=True)] if len(labels) > 2 else [])]
        if row["total"]["ci_high"] < 0:
            cells[-1] += " ⚠ lost"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def churn(table: dict[str, Any], m: dict[str, Any]) -> str:
    per_task = ", ".join(f"{t} {len(r['forgotten'])}/{r['start_right']}" for t, r in table.items())
    return (f"Forgotten {m['start']} → {m['end']}: {m['forgotten']} items the start got right ({m['forgotten_rate']:.1%}; "
            f"{per_task}); learned: {m['learned']}.")


def report(labels: list[str], table: dict[str, Any], m: dict[str, Any],
           answers: dict[str, dict[str, dict[int, dict[str, Any]]]] | None = None, shown: int = 10) -> str:
    lines = ["# Alignment tax", "", f"Benchmark scores of {' → '.join(labels)} on the same items, and each "
             "change as a paired difference (later − earlier) with its 95% bootstrap interval over items. "
             "A change whose interval lies below 0 is a loss (⚠).", "", *markdown_table(labels, table), "",
             f"**Largest drop** {m['start']} → {m['end']}: {m['max_drop']:+.3f} on `{m['max_drop_task']}` "
             f"(95% CI {m['max_drop_ci_low']:+.3f} to {m['max_drop_ci_high']:+.3f}); tasks lost beyond their "
             f"interval: {m['tasks_dropped']} of {m['tasks']}.", "", churn(table, m)]
    start, end = m["start"], m["end"]
    for task, row in table.items() if answers else ():
        if not row["forgotten"]:
            continue
        lines += ["", f"### Forgotten on `{task}` ({len(row['forgotten'])}; first {min(shown, len(row['forgotten']))})", "",
                  f"| question | {start} | {end} |", "|---|---|---|"]
        for i in row["forgotten"][:shown]:
            cell = [answers[start][task][i]["question"], answers[start][task][i]["answer"], answers[end][task][i]["answer"]]
            lines.append("| " + " | ".join(str(c or "").replace("|", "\\|").replace("\n", " ")[:120] for c in cell) + " |")
    return "\n".join(lines) + "\n"


def card(result: StageResult | dict[str, Any]) -> list[str]:
    """The results card's block: the per-task table and the largest drop."""
    data, m = read_table(result), (result.metrics if isinstance(result, StageResult) else result["metrics"])
    return ["## Capability benchmark and alignment tax", "", *markdown_table(data["models"], data["tasks"]), "",
            f"Largest drop {m['start']} → {m['end']}: {m['max_drop']:+.3f} on `{m['max_drop_task']}` (95% CI "
            f"{m['max_drop_ci_low']:+.3f} to {m['max_drop_ci_high']:+.3f}); tasks lost beyond their interval: "
            f"{m['tasks_dropped']} of {m['tasks']}. Scores [95% CI]; changes are paired differences.", "",
            churn(data["tasks"], m) + " The `tax` step's report lists them."]


def read_table(result: StageResult | dict[str, Any]) -> dict[str, Any]:
    return json.loads(SPEC.output(result, "table").read_text())


def run(config: TaxStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already
            return job.result
        with job.writing() as out:
            ends = (next(iter(job.config.models)), next(reversed(job.config.models)))
            answers = {label: benchmark.read_answers(job.config.models[label].path) for label in ends}
            job.commit(out, tax(out, job.config, inputs, job.context, answers))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
