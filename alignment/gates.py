"""Metric gates, the pure part: conditions on a step's metrics, evaluated and explained.

A recipe's ``gates:`` are ``GateCondition``s; ``GateCheck`` holds one run's conditions and results: after
each step the chain asks it (``after``), and a failed condition stops the run. A metric the step did not
produce, or did not compute (``None``, e.g. judged numbers of a judge at chance), fails its condition: a
gate never passes on a number nobody measured. A condition whose step never ran fails at ``finish``.
What a run shows and what it releases are the flows' (``flows.release``, ``flows.reports``); nothing here
knows Prefect.
"""

import operator
from typing import Any

from alignment.config import GateCondition

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


class GateFailed(RuntimeError):
    """A gate condition failed: the flow stops; the gate report says which and why."""


def condition_text(c: GateCondition) -> str:
    metric = f"{c.metric} − {c.minus}" if c.minus else c.metric
    return f"{c.step}: {metric} {c.op} {c.value:g}"


def evaluate(c: GateCondition, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """One condition against a step's metrics (None: the step never ran)."""
    out = {"condition": condition_text(c), "step": c.step, "threshold": f"{c.op} {c.value:g}", "value": None}
    if metrics is None:
        return {**out, "passed": False, "why": f"step {c.step} did not run"}
    values = []
    for name in filter(None, (c.metric, c.minus)):
        if name not in metrics:
            numeric = sorted(k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool))
            return {**out, "passed": False, "why": f"{c.step} has no metric {name!r} (it has: {', '.join(numeric)})"}
        if not isinstance(metrics[name], int | float) or isinstance(metrics[name], bool):
            return {**out, "passed": False, "why": f"{name} was not computed ({metrics[name]!r})"
                    + (f": {metrics['judged_note']}" if metrics.get("judged_note") else "")}
        values.append(float(metrics[name]))
    value = values[0] - (values[1] if len(values) > 1 else 0.0)
    passed = OPS[c.op](value, c.value)
    return {**out, "value": value, "passed": passed, "why": "" if passed else f"{value:.4g} is not {c.op} {c.value:g}"}


def check_recipe(recipe, labels: tuple[str, ...]) -> list[GateCondition]:
    """The recipe's gates, each naming a step this recipe runs (before any stage starts)."""
    for i, c in enumerate(recipe.gates):
        if c.step not in labels:
            raise ValueError(f"gates[{i}].step: {c.step!r} is not a step of this recipe; its steps are "
                             f"{', '.join(labels)}")
    return list(recipe.gates)


class GateCheck:
    """The conditions of one run and their results, in the order they were checked."""

    def __init__(self, conditions: list[GateCondition]):
        self.conditions = conditions
        self.results: list[dict[str, Any]] = []
        self.checked: set[int] = set()

    def after(self, label: str, metrics: dict[str, Any]) -> bool:
        """Check the conditions on step `label`; True when any condition so far has failed."""
        for i, c in enumerate(self.conditions):
            if c.step == label and i not in self.checked:
                self.checked.add(i)
                self.results.append(evaluate(c, metrics))
        return self.failed()

    def finish(self) -> bool:
        """Conditions on steps that never ran fail now (before any promotion); True when any failed."""
        for i, c in enumerate(self.conditions):
            if i not in self.checked:
                self.checked.add(i)
                self.results.append(evaluate(c, None))
        return self.failed()

    def failed(self) -> bool:
        return any(not r["passed"] for r in self.results)

    def failures(self) -> list[str]:
        return [f"{r['condition']} ({r['why']})" for r in self.results if not r["passed"]]

    def markdown(self, flow: str) -> str:
        failed = sum(not r["passed"] for r in self.results)
        lines = [f"# {flow}: gates", "",
                 f"**{'FAILED' if failed else 'passed'}**: {len(self.results) - failed} of {len(self.results)} "
                 "condition(s) hold.", "", "| | condition | value | threshold | why |", "|---|---|---|---|---|"]
        for r in self.results:
            value = "not measured" if r["value"] is None else f"{r['value']:.4g}"
            lines.append(f"| {'✅' if r['passed'] else '❌'} | `{r['condition']}` | {value} | {r['threshold']} | {r['why']} |")
        return "\n".join(lines)
