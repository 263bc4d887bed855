"""Prefect UI artifacts for a finished run, created at flow level so cached stages show too.

Per step: a markdown summary (status, config, inputs with hashes, metrics, location), its report and
rollouts when the stage writes them, and its training curves (a plot embedded as an image, sparklines
and a compact table); per run: a table of held-out prompts with every `respond` step's answers, and a
results card with every step's headline metrics. What a stage writes, plots and reports comes from its
``SPEC`` (``alignment.stages.contract``); nothing here names a stage.
"""

import base64
import io
import json
from pathlib import Path
from typing import Any

import yaml
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from alignment.data import prompt_texts
from alignment.stages import respond, spec
from alignment.training import read_curves

SPARK = "▁▂▃▄▅▆▇█"
RESPOND_PREFIX = "respond_"  # a respond step labelled respond_<name> is the table's column <name>
RESPOND_SUFFIX = "-respond"  # ... and one labelled <name>-respond (round-2-respond) the column <name>


def sparkline(values: list[float], width: int = 40) -> str:
    if not values:
        return ""
    if len(values) > width:  # mean over equal buckets keeps the shape
        step = len(values) / width
        values = [sum(b) / len(b) for i in range(width)
                  if (b := values[int(i * step): max(int((i + 1) * step), int(i * step) + 1)])]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[int((v - lo) / span * (len(SPARK) - 1))] for v in values)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def curves_png(stage: str, keys: list[str], history: list[dict[str, Any]]) -> str | None:
    """A small PNG of the curves as a data URI (Prefect image artifacts need a URL; markdown takes this)."""
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.4), dpi=80, squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        pts = [(h["step"], h[k]) for h in history if k in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1.5)
        ax.set_title(f"{stage} {k}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return png_data_uri(fig)


def png_data_uri(fig) -> str:
    """A matplotlib figure as a PNG data URI (markdown artifacts embed it; image artifacts need a URL)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def curves_markdown(stage: str, curves: tuple[str, ...], history: list[dict[str, Any]]) -> str:
    keys = [k for k in curves if any(k in h for h in history)]
    lines = [f"# {stage}: training curves", ""]
    if not keys:
        return "\n".join(lines + ["No training curve was logged."])
    png = curves_png(stage, keys, history)
    if png:
        lines += [f"![{stage} curves]({png})", ""]
    lines += ["| metric | first | last | min | max | curve |", "|---|---|---|---|---|---|"]
    for k in keys:
        vals = [h[k] for h in history if k in h]
        lines.append(f"| {k} | {vals[0]:.4g} | {vals[-1]:.4g} | {min(vals):.4g} | {max(vals):.4g} | "
                     f"`{sparkline(vals)}` |")
    rows = [h for h in history if any(k in h for k in keys)]
    lines += ["", "| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for h in rows[:: max(1, len(rows) // 12)]:
        lines.append(f"| {h['step']} | " + " | ".join(fmt(h.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def stage_markdown(stage: str, result: dict[str, Any], status: str) -> str:
    manifest = json.loads((Path(result["path"]) / "manifest.json").read_text())
    config = json.loads((Path(result["path"]) / "config.json").read_text())
    metrics = manifest.get("metrics", {})
    lines = [
        f"# {stage}: {status}",
        "",
        f"- **artifact**: `{manifest['artifact_id']}`",
        f"- **location**: `{result['path']}`",
        f"- **created**: {manifest['created_at']} in {manifest['duration_s']} s, code `{manifest['code_version']}`",
        f"- **first produced by flow run**: `{manifest.get('run', {}).get('flow_run_id', 'outside Prefect')}`",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {fmt(v)} |" for k, v in metrics.items()],
        "",
        "## Inputs",
        "",
        "| input | identity |",
        "|---|---|",
        *[f"| {k} | `{json.dumps(v, sort_keys=True)[:160]}` |" for k, v in manifest["inputs"].items()],
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).strip(),
        "```",
    ]
    return "\n".join(lines)


def responses_table(results: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Held-out prompts, one column per respond step (in run order), named after its label."""
    columns = {label.removeprefix(RESPOND_PREFIX).removesuffix(RESPOND_SUFFIX): respond.read_responses(r).get("heldout", [])
               for label, r in results.items() if r["stage"] == respond.SPEC.name}
    first = next((rows for rows in columns.values() if rows), [])
    table = []
    for i, prompt in enumerate(prompt_texts(first)):
        row = {"prompt": prompt}
        for name, rows in columns.items():
            row[name] = rows[i]["response"] if i < len(rows) else ""
        table.append(row)
    return table


def key_of(label: str) -> str:
    return label.replace("_", "-")  # artifact keys allow [a-z0-9-]


def publish_stages(results: dict[str, dict[str, Any]], statuses: dict[str, str]) -> None:
    """Per task (label): its summary, its report if it wrote one, its training curves if it trained."""
    for label, result in results.items():
        stage, key = spec(result["stage"]), key_of(label)
        create_markdown_artifact(stage_markdown(label, result, statuses[label]), key=f"{key}-summary",
                                 description=f"{label}: status, metrics, inputs and config")
        report = stage.output(result, "report") if "report" in stage.outputs else None
        if report is not None and report.is_file():
            create_markdown_artifact(report.read_text(), key=f"{key}-report", description=f"{label}: the readable report")
        rollouts = stage.output(result, "rollouts") if "rollouts" in stage.outputs else None
        if rollouts is not None and rollouts.is_file():
            rows = [json.loads(line) for line in rollouts.read_text(encoding="utf-8").splitlines() if line.strip()]
            if rows:
                create_table_artifact(rows, key=f"{key}-rollouts",
                                      description=f"{label}: sample rollouts (every sample_every iterations)")
        if stage.curves:
            create_markdown_artifact(curves_markdown(label, stage.curves, read_curves(result["path"])),
                                     key=f"{key}-curves", description=f"{label}: training curves")


def publish(flow: str, results: dict[str, dict[str, Any]], statuses: dict[str, str]) -> dict[str, Any]:
    """Create every UI artifact of one run (step summaries, responses table, results card with every
    step's headline metrics); returns the headline numbers."""
    publish_stages(results, statuses)
    table = responses_table(results)
    if table:
        create_table_artifact(table, key=f"{flow}-responses",
                              description="Held-out prompts: the answers after each step that makes a model")
    numbers = headline(results)
    card = [f"# {flow}: results", "", "| step | status | artifact |", "|---|---|---|"]
    card += [f"| {s} | {statuses[s]} | `{r['key']}` |" for s, r in results.items()]
    skipped = [k for k, v in numbers.items() if v is None]  # e.g. judged numbers with a judge at chance
    card += ["", "| metric | value |", "|---|---|",
             *[f"| {k} | {fmt(v)} |" for k, v in numbers.items() if v is not None],
             *([f"| not computed | {', '.join(skipped)} |"] if skipped else [])]
    for r in results.values():  # blocks a stage adds to the card (SPEC.card), e.g. the alignment tax table
        if (block := spec(r["stage"]).card) is not None:
            card += ["", *block(r)]
    create_markdown_artifact("\n".join(card), key=f"{flow}-results", description=f"{flow}: headline results")
    return numbers


def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every step's headline metrics (its stage's ``SPEC.headline``), named ``<label>_<metric>``. A result
    without one is an error: the stage broke its contract (the stage checks it when it commits)."""
    out: dict[str, Any] = {}
    for label, result in results.items():
        for k in spec(result["stage"]).headline:
            if k not in result["metrics"]:
                raise KeyError(f"{label}: the {result['stage']} result has no headline metric {k!r}")
            out[f"{label}_{k}"] = result["metrics"][k]
    return out
