"""The Prefect UI artifacts of a run, created at flow level so that cached steps show too: per step a
summary, report, rollouts and curves, per run the results card and the responses table (``run``); the
gate report (``publish_gates``); the constitutional-ai report (``cai``); the rounds' chart and table
(``rounds``). Renderers take typed values and return text; ``publish*`` create the artifacts."""

from typing import Any

from flows.reports.run import fmt, headline, png_data_uri, publish, publish_stages

__all__ = ["fmt", "headline", "png_data_uri", "publish", "publish_gates", "publish_stages"]


def publish_gates(flow: str, gates: Any) -> None:
    """The gate report (``alignment.gates.GateCheck.markdown``), once any condition was checked."""
    from prefect.artifacts import create_markdown_artifact

    if gates.results:
        create_markdown_artifact(gates.markdown(flow), key=f"{flow}-gates",
                                 description=f"{flow}: every gate condition, its value and its threshold")
