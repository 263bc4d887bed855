"""The evaluate stage's ``report.md`` as text: pure renderers of its config, its metrics and its
comparison rows (``alignment.stages.evaluate`` computes them and writes the files)."""

from collections.abc import Mapping, Sequence
from typing import Any

from alignment.config import EvaluateStageConfig

TABLE_ROWS = 16  # held-out prompts shown side by side in the report
Metrics = Mapping[str, Any]
Row = Mapping[str, Any]  # one comparison.jsonl row: set, prompt, policy, reference, rewards, refusal flags


def _pct(m: Metrics, key: str) -> str:
    return f"{100 * m[f'{key}_rate']:.0f}% [{100 * m[f'{key}_ci_low']:.0f}, {100 * m[f'{key}_ci_high']:.0f}]"


def _ci(m: Metrics, key: str, fmt: str = "+.3f") -> str:
    return f"{m[f'{key}_mean']:{fmt}} [{m[f'{key}_ci_low']:{fmt}}, {m[f'{key}_ci_high']:{fmt}}]"


def judge_note(m: Metrics) -> str:
    if "judge_calibration_accuracy" not in m:
        return "No calibration set: the judge's own accuracy is unknown, treat judged numbers with care."
    acc = (f"{m['judge_calibration_accuracy']:.2f} [{m['judge_calibration_accuracy_ci_low']:.2f}, "
           f"{m['judge_calibration_accuracy_ci_high']:.2f}] on {m['judge_calibration_n']} labelled pairs")
    if m["judge_calibration_meaningful"]:
        return f"Judge accuracy {acc}: clearly above chance."
    verb = "were not computed" if not m["judged"] else "**are not meaningful**"
    return (f"Judged numbers {verb}: the judge's accuracy is {acc}, not clearly above chance (0.5). Use a "
            "stronger judge model (`evaluate.judge.model`), or `evaluate.judge.at_chance: compute` to judge "
            "anyway; the keyword columns do not depend on the judge.")


def report_markdown(config: EvaluateStageConfig, m: Metrics) -> str:
    flag = "" if m.get("judge_calibration_meaningful", True) else " ⚠ judge at chance"
    judge = f"`{config.judge.model.name}`" if config.judge is not None else "none"
    lines = ["# evaluate: policy vs reference", "", f"- policy answers: `{config.policy.path}`",
             f"- reference answers: `{config.reference.path}`", f"- judge: {judge}", f"- {judge_note(m)}", "",
             "| measure | value (95% bootstrap interval) |", "|---|---|"]
    if m["judged"]:
        lines += [f"| win rate, policy vs reference (judged, ties = ½){flag} | {m['win_rate']:.2f} "
                  f"[{m['win_rate_ci_low']:.2f}, {m['win_rate_ci_high']:.2f}] over {m['n']} prompts, {m['ties']} ties |",
                  f"| judge position bias (share picking the first shown − 0.5) | {m['position_bias']:+.3f} |"]
    else:
        lines.append(f"| win rate, policy vs reference (judged) | {m['judged_note']} |")
    lines.append(f"| length drift (policy / reference tokens, held-out) | {m['length_drift_ratio']:.2f} "
                 f"({m['length_heldout_policy_mean']:.1f} vs {m['length_heldout_reference_mean']:.1f}) |")
    if m["reward_diff_mean"] is not None:
        lines.append(f"| reward model `{m['reward_model']}`: policy / reference mean (held-out) | "
                     f"{_ci(m, 'reward_policy', '.3f')} / {_ci(m, 'reward_reference', '.3f')}; paired difference "
                     f"{_ci(m, 'reward_diff')} |")
    if m["kl_k3_mean"] is not None:
        lines.append(f"| KL(policy ‖ reference) per response on policy samples, k1 / k3 (nats) | "
                     f"{_ci(m, 'kl_k1', '.3f')} / {_ci(m, 'kl_k3', '.3f')} |")
    if m.get("reward_redteam_diff_mean") is not None:
        lines.append(f"| reward model on red-team answers (harm as the reward model sees it): policy / reference | "
                     f"{_ci(m, 'reward_redteam_policy', '.3f')} / {_ci(m, 'reward_redteam_reference', '.3f')}; "
                     f"paired difference {_ci(m, 'reward_redteam_diff')} |")
    if m.get("harm_measure"):
        lines.append(f"| harmful compliance and over-refusal in the headline come from | {m['harm_measure']} |")
    for key, title in (("harmful_compliance", "harmful compliance on red-team prompts"),
                       ("over_refusal", "over-refusal on benign prompts")):
        for how in ("keyword", "judged"):
            if m.get(f"policy_{key}_{how}_rate") is not None:
                mark = flag if how == "judged" else ""
                lines.append(f"| {title} ({how}){mark}: policy / reference | {_pct(m, f'policy_{key}_{how}')} / "
                             f"{_pct(m, f'reference_{key}_{how}')} |")
    return "\n".join(lines)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:200]


def heldout_table(rows: Sequence[Row]) -> list[str]:
    rewards = "reward_policy" in rows[0]
    head = "| prompt | reference | policy |" + (" reward ref. | reward policy |" if rewards else "")
    lines = ["", f"Held-out prompts (first {min(TABLE_ROWS, len(rows))} of {len(rows)}):", "", head,
             "|---" * (5 if rewards else 3) + "|"]
    for r in rows[:TABLE_ROWS]:
        tail = f" {r['reward_reference']:.3f} | {r['reward_policy']:.3f} |" if rewards else ""
        lines.append(f"| {_cell(r['prompt'])} | {_cell(r['reference'])} | {_cell(r['policy'])} |" + tail)
    return lines


def report(config: EvaluateStageConfig, m: Metrics, rows: Sequence[Row]) -> str:
    """``report.md``: the measures table, then the held-out prompts side by side."""
    return report_markdown(config, m) + "\n" + "\n".join(heldout_table([r for r in rows if r["set"] == "heldout"])) + "\n"
