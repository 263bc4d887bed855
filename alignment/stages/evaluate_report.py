"""The evaluate stage's readable outputs: ``report.md`` and ``responses.jsonl`` (one row per prompt)."""

import json
from pathlib import Path
from typing import Any

from alignment.data import prompt_texts


def _pct(m: dict, key: str) -> str:
    return f"{100 * m[f'{key}_rate']:.0f}% [{100 * m[f'{key}_ci_low']:.0f}, {100 * m[f'{key}_ci_high']:.0f}]"


def judge_note(m: dict[str, Any]) -> str:
    if "judge_calibration_accuracy" not in m:
        return "No calibration set: the judge's own accuracy is unknown, treat judged numbers with care."
    acc = (f"{m['judge_calibration_accuracy']:.2f} [{m['judge_calibration_accuracy_ci_low']:.2f}, "
           f"{m['judge_calibration_accuracy_ci_high']:.2f}] on {m['judge_calibration_n']} labelled pairs")
    if m["judge_calibration_meaningful"]:
        return f"Judge accuracy {acc}: clearly above chance."
    return (f"**Judged numbers are not meaningful**: the judge's accuracy is {acc}, not clearly above "
            "chance (0.5). Use a stronger judge model (`evaluate.judge.model`); the keyword columns do not "
            "depend on the judge.")


def report_markdown(config, m: dict[str, Any]) -> str:
    flag = "" if m.get("judge_calibration_meaningful") else " ⚠ judge at chance"
    lines = [
        "# evaluate: policy vs reference", "",
        f"- policy: `{config.model.name}`", f"- reference: `{config.reference.name}`",
        f"- judge: `{m['judge_model']}` on `{m['judge_engine']}`, template `{m['judge_template']}`",
        f"- {judge_note(m)}", "",
        "| measure | value (95% bootstrap interval) |", "|---|---|",
        f"| win rate, policy vs reference (judged, ties = ½){flag} | {m['win_rate']:.2f} [{m['win_rate_ci_low']:.2f}, "
        f"{m['win_rate_ci_high']:.2f}] over {m['n']} prompts, {m['ties']} ties |",
        f"| judge position bias (share picking the first shown − 0.5) | {m['position_bias']:+.3f} |",
        f"| length drift (policy / reference tokens, held-out) | {m['length_drift_ratio']:.2f} "
        f"({m['length_heldout_policy_mean']:.1f} vs {m['length_heldout_reference_mean']:.1f}) |",
    ]
    if "reward_diff_mean" in m:
        lines.append(f"| reward model `{m['reward_model']}`: policy / reference mean (held-out) | "
                     f"{m['reward_policy_mean']:.3f} / {m['reward_reference_mean']:.3f}; paired difference "
                     f"{m['reward_diff_mean']:+.3f} [{m['reward_diff_ci_low']:+.3f}, {m['reward_diff_ci_high']:+.3f}] |")
    for key, title in (("harmful_compliance", "harmful compliance on red-team prompts"),
                       ("over_refusal", "over-refusal on benign prompts")):
        for how in ("keyword", "judged"):
            if f"policy_{key}_{how}_rate" in m:
                mark = flag if how == "judged" else ""
                lines.append(f"| {title} ({how}){mark}: policy / reference | {_pct(m, f'policy_{key}_{how}')} / "
                             f"{_pct(m, f'reference_{key}_{how}')} |")
    return "\n".join(lines)


def write_report(out: Path, config, checked: dict, answers: dict, m: dict[str, Any]) -> None:
    (out / "report.md").write_text(report_markdown(config, m) + "\n")
    verdicts = iter(m.get("verdicts", []))
    with open(out / "responses.jsonl", "w", encoding="utf-8") as f:
        for name, rows in checked["sets"].items():
            flags = {who: m.get(f"{who}_{name}_refusal_flags") for who in ("policy", "reference")}
            for i, q in enumerate(prompt_texts(rows)):
                row: dict[str, Any] = {"set": name, "prompt": q, "policy": answers["policy"][name][i].text,
                                       "reference": answers["reference"][name][i].text}
                if name == "heldout":
                    row["p_policy_better"] = round(next(verdicts), 4)
                for who, fl in flags.items():
                    if fl:
                        row[f"{who}_refused"] = {"judged": fl["judged"][i], "keyword": fl["keyword"][i]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
