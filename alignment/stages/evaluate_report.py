"""The evaluate stage's readable outputs: ``report.md`` and ``comparison.jsonl`` (one row per prompt)."""

import json
from pathlib import Path
from typing import Any

TABLE_ROWS = 16  # held-out prompts shown side by side in the report


def not_computed(keys: tuple[str, ...]) -> dict[str, None]:
    """Every headline metric, None until computed (the stage contract: a result carries all of them)."""
    return dict.fromkeys(keys)


def _pct(m: dict, key: str) -> str:
    return f"{100 * m[f'{key}_rate']:.0f}% [{100 * m[f'{key}_ci_low']:.0f}, {100 * m[f'{key}_ci_high']:.0f}]"


def _ci(m: dict, key: str, fmt: str = "+.3f") -> str:
    return f"{m[f'{key}_mean']:{fmt}} [{m[f'{key}_ci_low']:{fmt}}, {m[f'{key}_ci_high']:{fmt}}]"


def judge_note(m: dict[str, Any]) -> str:
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


def report_markdown(config, m: dict[str, Any]) -> str:
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


def heldout_table(rows: list[dict[str, Any]]) -> list[str]:
    rewards = "reward_policy" in rows[0]
    head = "| prompt | reference | policy |" + (" reward ref. | reward policy |" if rewards else "")
    lines = ["", f"Held-out prompts (first {min(TABLE_ROWS, len(rows))} of {len(rows)}):", "", head,
             "|---" * (5 if rewards else 3) + "|"]
    for r in rows[:TABLE_ROWS]:
        tail = f" {r['reward_reference']:.3f} | {r['reward_policy']:.3f} |" if rewards else ""
        lines.append(f"| {_cell(r['prompt'])} | {_cell(r['reference'])} | {_cell(r['policy'])} |" + tail)
    return lines


def comparison_rows(inputs, m: dict[str, Any]) -> list[dict[str, Any]]:
    verdicts = iter(m.get("verdicts", []))
    rewards = m.get("rewards", {})
    out = []
    for name in inputs.answers["policy"]:
        for i, q in enumerate(inputs.questions(name)):
            row: dict[str, Any] = {"set": name, "prompt": q, "policy": inputs.texts("policy", name)[i],
                                   "reference": inputs.texts("reference", name)[i]}
            if name == "heldout":
                if m["judged"]:
                    row["p_policy_better"] = round(next(verdicts), 4)
                for side in ("policy", "reference"):
                    if side in rewards:
                        row[f"reward_{side}"] = rewards[side][i]
            for side in ("policy", "reference"):
                for how in ("keyword", "judged"):
                    flags = m.get(f"{how}_refusal_flags", {}).get(f"{side}_{name}")
                    if flags:
                        row.setdefault(f"{side}_refused", {})[how] = flags[i]
            out.append(row)
    return out


def write_report(out: Path, config, inputs, m: dict[str, Any]) -> None:
    from alignment.stages.evaluate import SPEC

    rows = comparison_rows(inputs, m)
    with open(out / SPEC.outputs["comparison"], "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    text = report_markdown(config, m) + "\n" + "\n".join(heldout_table([r for r in rows if r["set"] == "heldout"]))
    (out / SPEC.outputs["report"]).write_text(text + "\n", encoding="utf-8")
