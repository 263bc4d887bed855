"""The release: nothing is released unless its numbers and, when asked, a person say so.

- **Metric gates** (`gates:` in any recipe; the predicate is ``alignment.gates``): checked by the chain
  right after their step. The first failing step stops the flow (``GateFailed``, the run ends Failed)
  with a markdown gate report (``<flow>-gates``) naming every condition checked so far, its value and its
  threshold. A gate whose step never ran (an iterative round after an early stop) fails at the end,
  before promotion.
- **Approval** (`promote.approval`): the run waits with typed input (``Approval``) and the UI shows a
  Resume form: approve or not, who, a comment; `alignment approve RUN_ID` answers from a terminal. A
  deployment run is *suspended* (its process exits, so a paused run holds no serve slot or GPU; on resume
  it starts again and every step comes back ``Cached``); an in-process `alignment run` is *paused* (the
  terminal waits). A rejection, or a resume without an answer, promotes nothing.
- **Promote**: the `promote` task records the release (``alignment.releases``) and pushes it to a hub
  repository when one is configured and reachable.

Gates and `promote`, and what the gates measure, come from the served recipe: deployment parameters may
not change them (``flows.service.policy``). An approval is bound to the artifact and gate results it was asked
about (``approval_question``): a run changed while it waits asks again. Whoever holds the API credential
can resume a run (approve it), so the reviewer's name is what they type, not an identity.
"""

import json
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput
from pydantic import Field

from alignment.config import ModelSpec
from alignment.gates import GateCheck
from flows import reports

POLL_S = 3  # how often a paused run checks for the decision


class Approval(RunInput):
    """What the reviewer answers in the UI's Resume form."""

    approve: bool = Field(False, description="Promote this model (unchecked: reject it).")
    reviewer: str = Field("", max_length=100, description="Who decides.")
    comment: str = Field("", max_length=2000, description="Why (kept in the release record).")


def approval_question(model: ModelSpec, gates: GateCheck) -> tuple[str, dict[str, Any]]:
    """The key of the approval input and what it approves: the model's artifact id and the gate results.
    A run whose parameters changed while it waited computes another model (or other numbers) when it
    resumes, so it asks a new question: an answer about model A never releases model B."""
    from alignment.artifacts import sha256_json
    from alignment.releases import artifact_of

    manifest = json.loads((artifact_of(model.name) / "manifest.json").read_text())
    subject = {"artifact_id": manifest["artifact_id"], "gates": gates.results}
    return f"approval-{sha256_json(subject)[:16]}", {"artifact_id": manifest["artifact_id"],
                                                   "gates_sha256": sha256_json(gates.results)}


def ask_approval(flow: str, model: ModelSpec, headline: dict[str, Any], gates: GateCheck, timeout_s: int) -> dict[str, Any]:
    """Pause the run until a person answers the Resume form (or `alignment approve`); the answer is bound
    to the artifact and gate results asked about (`approval_question`)."""
    from prefect.flow_runs import pause_flow_run, suspend_flow_run
    from prefect.runtime import deployment, flow_run

    key, subject = approval_question(model, gates)

    numbers = [f"| {k} | {reports.fmt(v)} |" for k, v in headline.items() if v is not None][:40]
    create_markdown_artifact(
        "\n".join([f"# {flow}: approval requested", "", f"Model: `{subject['artifact_id']}` at `{model.name}`", "",
                   "Review the run's artifacts (results card, evaluation report, responses), then press "
                   "**Resume** on this run's page: tick `approve` to promote the model, leave it unticked to "
                   f"reject it. From a terminal: `alignment approve {flow_run.id}` (or `--reject`).", "",
                   gates.markdown(flow) if gates.results else "No metric gates.", "",
                   "| metric | value |", "|---|---|", *numbers]),
        key=f"{flow}-approval", description=f"{flow}: what to review before approving the model")
    get_run_logger().info("waiting for approval (up to %d s): press Resume on this run in the UI, or run "
                          "`alignment approve %s`", timeout_s, flow_run.id)
    form = Approval.with_initial_data(description=f"Promote the model `{subject['artifact_id']}`? Its numbers and gates are in "
                                      f"the run's `{flow}-approval` artifact. Tick *Approve* to release it; "
                                      "leave it off to reject it.")
    if deployment.id is not None:  # served or pooled: free the process (and its slot or GPU) while waiting;
        # on resume the run starts again, every step comes back Cached, and this returns the answer
        answer = suspend_flow_run(wait_for_input=form, timeout=timeout_s, key=key)
    else:  # `alignment run`: the user's own terminal waits
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=POLL_S, key=key)
    # resumed without an answer (e.g. `prefect flow-run resume`): the form's defaults, i.e. not approved
    return {"approved": bool(answer.approve), "reviewer": answer.reviewer, "comment": answer.comment, **subject}


@task(name="promote", task_run_name="promote", persist_result=False, description="Record the approved model as a release (and push it "
      "to the hub repository when one is configured and reachable).")
def promote_task(name: str, model_dir: str, run: dict[str, Any], gate_results: list[dict[str, Any]],
                 approval: dict[str, Any] | None, hub_repo: str | None, token_env: str) -> dict[str, Any]:
    from alignment.releases import promote

    record = promote(name, model_dir, run=run, gates=gate_results, approval=approval, hub_repo=hub_repo,
                     token_env=token_env)
    get_run_logger().info("promote: release %s v%d of %s (%s)", name, record["version"], record["artifact_id"],
                          record["path"])
    return record


def _final_gates(chain) -> None:
    if chain.gates.finish():
        chain.stop_at_gate()
    reports.publish_gates(chain.flow, chain.gates)


def release(chain, recipe, model: ModelSpec, headline: dict[str, Any]) -> dict[str, Any] | None:
    """After the last step: every gate must have passed; then approval (if asked) and `promote`."""
    from prefect.runtime import flow_run

    flow = chain.flow
    _final_gates(chain)
    options = recipe.promote
    if options is None:
        return None
    approval = None
    if options.approval:
        approval = ask_approval(flow, model, headline, chain.gates, options.timeout_s)
        if not approval["approved"]:
            get_run_logger().warning("rejected by %s: %s; nothing is promoted", approval["reviewer"] or "the reviewer",
                                     approval["comment"] or "(no comment)")
            create_markdown_artifact(f"# {flow}: not promoted\n\nRejected by {approval['reviewer'] or 'the reviewer'}: "
                                     f"{approval['comment'] or '(no comment)'}", key=f"{flow}-release",
                                     description=f"{flow}: the release decision")
            return {"promoted": False, **approval}
    record = promote_task(options.name or flow, model.name, {"flow": flow, "flow_run_id": str(flow_run.id)},
                          chain.gates.results, approval, options.hub_repo, options.token_env)
    hub = record["hub"]
    create_markdown_artifact(
        "\n".join([f"# {flow}: released {record['name']} v{record['version']}", "",
                   f"- artifact: `{record['artifact_id']}` at `{record['artifact_path']}`",
                   f"- record: `{record['path']}`",
                   f"- approval: {approval if approval else 'not asked (promote.approval: false)'}",
                   f"- hub: {hub if hub else 'no hub repository configured'}"]),
        key=f"{flow}-release", description=f"{flow}: the release record")
    return {"promoted": True, **record}


def no_release(chain, why: str) -> dict[str, Any]:
    """The flow has no model worth releasing: gates are still checked and reported, nothing is promoted."""
    _final_gates(chain)
    get_run_logger().warning("nothing to promote: %s", why)
    return {"promoted": False, "reason": why}
