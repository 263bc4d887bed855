"""UI artifacts specific to the constitutional-ai flow: which principles were used, revision statistics
per principle, and a sample of prompt / initial / critique / revision rows."""

import json
from typing import Any

from alignment.constitution import Constitution
from alignment.stages import critique_revise

SAMPLE_ROWS = 12


def principle_table(revised: dict[str, Any], constitution: Constitution) -> list[dict[str, Any]]:
    stats = json.loads(critique_revise.SPEC.output(revised, "principles").read_text())
    texts = {p.id: p.critique for p in constitution.principles}
    return [{"principle": pid, "used": s.get("used", 0), "kept": s.get("kept", 0), "empty": s.get("empty", 0),
             "unchanged": s.get("unchanged", 0), "copied": s.get("copied", 0), "repeated": s.get("repeated", 0),
             "critique request": (texts.get(pid) or "")[:120]} for pid, s in stats.items()]


def sample_rows(revised: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    with open(critique_revise.SPEC.output(revised, "revisions"), encoding="utf-8") as f:
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
