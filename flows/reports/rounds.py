"""The rounds of iterative DPO as the UI shows them (a ``flows.rounds.Outcome``): a chart of held-out
reward, KL and length per round, the round-over-round table and why the loop stopped. Renderers of what
a loop produced; they read it through ``Outcome`` below, never import the loop."""

from collections.abc import Sequence
from typing import Any, Protocol

from flows.reports.run import png_data_uri


class Round(Protocol):
    evaluation: dict[str, Any]  # the round's evaluate result ({"metrics": ...})


class Outcome(Protocol):
    """What the report reads of ``flows.rounds.Outcome``."""

    rounds: Sequence[Round]
    score_name: str | None
    start: float | None
    best: int
    stopped: str

    def table(self) -> list[dict[str, Any]]: ...


def chart_png(outcome: Outcome, rows: list[dict[str, Any]]) -> str | None:
    """Held-out reward (with its 95% interval), KL to the start model and length per round (`rows`:
    `outcome.table()`)."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.6), dpi=80)
    xs = [r["round"] for r in rows]
    ms = [outcome.rounds[i].evaluation["metrics"] for i in range(len(rows))]
    score = [m.get("reward_policy_mean") for m in ms]
    if all(v is not None for v in score):
        lo = [v - m["reward_policy_ci_low"] for v, m in zip(score, ms, strict=True)]
        hi = [m["reward_policy_ci_high"] - v for v, m in zip(score, ms, strict=True)]
        axes[0].errorbar(xs, score, yerr=[lo, hi], marker="o", capsize=3)
        if outcome.start is not None and outcome.score_name == "reward_policy_mean":
            axes[0].axhline(outcome.start, ls="--", c="gray", lw=1, label="start")
            axes[0].legend(fontsize=7)
    axes[0].set_title("held-out reward (95% CI)", fontsize=9)
    for ax, key, title in ((axes[1], "kl_to_start", "KL to start (k3, nats)"), (axes[2], "length_tokens", "answer length (tokens)")):
        pts = [(r["round"], r[key]) for r in rows if r[key] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xlabel("round", fontsize=8)
        ax.set_xticks(xs)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return png_data_uri(fig)


def markdown(flow: str, outcome: Outcome, rows: list[dict[str, Any]]) -> str:
    """The round-over-round report: the chart, the table (`rows`: `outcome.table()`) and why the loop stopped."""
    start = "n/a" if outcome.start is None else f"{outcome.start:.4g}"
    lines = [f"# {flow}: round over round", "", f"**{outcome.stopped}.** Held-out score: "
             f"`{outcome.score_name or 'none'}`, start model {start}; best: "
             f"{'round ' + str(outcome.best) if outcome.best else 'the start model (no round beat it)'}.", ""]
    if png := chart_png(outcome, rows):
        lines += [f"![rounds]({png})", ""]
    cols = ("round", "best", "heldout_reward", "heldout_reward_ci", "gain_vs_start", "gain_ci", "win_rate",
            "pairs_kept", "pairs_dropped", "length_tokens", "kl_to_start", "seconds_to_compute")
    lines += ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    notes = {r["win_rate_note"] for r in rows if r["win_rate_note"]}
    if notes:
        lines += ["", f"Win rate: {'; '.join(sorted(notes))}."]
    lines += ["", "`seconds_to_compute`: the round's stages as recorded when they were made (a cached round "
              "took that long once)."]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def publish(flow: str, outcome: Outcome) -> None:
    """The rounds' report and table, as UI artifacts of the run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = outcome.table()
    create_markdown_artifact(markdown(flow, outcome, rows), key=f"{flow}-rounds",
                             description=f"{flow}: held-out reward, pairs, length, KL and time per round")
    if rows:
        create_table_artifact(rows, key=f"{flow}-rounds-table", description=f"{flow}: one row per round")
