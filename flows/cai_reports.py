"""UI artifacts specific to the constitutional-ai flow: which principles were used, revision statistics
per principle, and a sample of prompt / initial / critique / revision rows."""

import json
from pathlib import Path
from typing import Any

from alignment.constitution import Constitution

SAMPLE_ROWS = 12


def principle_table(revised: dict[str, Any], constitution: Constitution) -> list[dict[str, Any]]:
    stats = json.loads((Path(revised["path"]) / "principles.json").read_text())
    texts = {p.id: p.critique for p in constitution.principles}
    return [{"principle": pid, "used": s.get("used", 0), "kept": s.get("kept", 0), "empty": s.get("empty", 0),
             "unchanged": s.get("unchanged", 0), "copied": s.get("copied", 0), "repeated": s.get("repeated", 0),
             "critique request": (texts.get(pid) or "")[:120]} for pid, s in stats.items()]


def sample_rows(revised: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    with open(Path(revised["path"]) / "revisions.jsonl", encoding="utf-8") as f:
        for line, _ in zip(f, range(SAMPLE_ROWS), strict=False):
            r = json.loads(line)
            last = r["rounds"][-1]
            rows.append({"prompt": r["prompt"][-1]["content"], "initial": r["initial"],
                         "principles": ", ".join(x["principle_id"] for x in r["rounds"]),
                         "critique (last round)": last["critique"], "final revision": r["final"],
                         "kept": "yes" if r["kept"] else "no"})
    return rows


def publish(revised: dict[str, Any], constitution: Constitution, markdown, table) -> None:
    m = revised["metrics"]
    table(principle_table(revised, constitution), key="cai-principles",
          description=f"Principles used, with revision statistics ({constitution.name}, hash {constitution.hash})")
    table(sample_rows(revised), key="cai-revisions", description="Sample of prompt / initial / critique / revision")
    markdown("\n".join([
        f"# critique → revision: {m['revisions_kept']} of {m['revisions_total']} revisions kept", "",
        f"- constitution `{constitution.name}` v{constitution.version}, hash `{constitution.hash}`",
        f"- {m['prompts']} prompts × {m['rounds']} rounds; {m['prompts_with_revision']} prompts have a revision",
        f"- filtered: {m['filtered_empty']} empty, {m['filtered_unchanged']} unchanged, "
        f"{m.get('filtered_copied', 0)} copied (critique or example), {m['filtered_repeated']} repetitive",
    ]), key="cai-revision-stats", description="SL-CAI revision statistics")


def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cr = results.get("critique_revise", {}).get("metrics", {})
    for k in ("revisions_total", "revisions_kept", "filtered_empty", "filtered_unchanged", "filtered_copied",
              "filtered_repeated"):
        if k in cr:
            out[k] = cr[k]
    fb = results.get("feedback", {}).get("metrics", {})
    for k in ("pairs", "pairs_kept", "mean_abs_margin"):
        if k in fb:
            out[f"feedback_{k}"] = fb[k]
    from flows.reports import pick

    out.update(pick(results, "preference_model", ("heldout_accuracy", "heldout_pairs", "targets")))
    out.update(pick(results, "rl_cai", ("heldout_reward_gain_mean", "heldout_reward_gain_ci_low",
                                        "heldout_reward_gain_ci_high", "heldout_kl_k3_mean")))
    before = results.get("evaluate_sl", {}).get("metrics", {})
    after = results.get("evaluate_rl", {}).get("metrics", {})
    pairs = (("helpful", before, "reference"), ("sl_cai", before, "policy"), ("rl_cai", after, "policy"))
    for name, m, who in pairs:
        for key in ("harmful_compliance", "over_refusal"):
            for part in ("rate", "ci_low", "ci_high"):
                k = f"{who}_{key}_keyword_{part}"
                if k in m:
                    out[f"{name}_{key}_{part}"] = m[k]
    if "win_rate" in after:
        out.update({"rl_vs_sl_win_rate": after["win_rate"], "rl_vs_sl_win_rate_ci": [after["win_rate_ci_low"],
                    after["win_rate_ci_high"]], "judge_meaningful": after.get("judge_calibration_meaningful")})
    return out
