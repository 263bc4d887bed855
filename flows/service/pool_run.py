"""A pool's flow run process: ``python -m flows.service.pool_run`` (the literal command of the pools `alignment
deploy` makes; `alignment worker` runs it whatever the pool says).

Before any flow code loads, the deployment is checked against what `alignment deploy` recorded
(``flows.service.served``): the same entrypoint, pull steps and job variables, and no job variables on the run.
Anything else fails the run with a message naming what differs, and nothing from the API runs (pull steps
never do). Then Prefect's engine runs the flow from the *recorded* entrypoint (``PREFECT__FLOW_ENTRYPOINT``),
and the flow's own parameter check (``flows.service.policy``) judges the recipe against the record.
"""

import os
import runpy
import sys

from alignment.artifacts import canonical


def refusal(run, deployment, record) -> list[str]:
    """What differs between the run and its deployment as the API has them and the record (pure)."""
    found = []
    if run.job_variables:
        found.append(f"the run carries job_variables {sorted(run.job_variables)}")
    for field in ("entrypoint", "pull_steps", "job_variables"):
        if canonical(getattr(deployment, field) or None) != canonical(record.get(field) or None):
            found.append(f"the deployment's {field} differs from what `alignment deploy` created")
    return found


def main() -> int:
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    from flows.service import served, server

    server.apply_defaults()
    server.connect()  # a local API: proven ours before the credential is used
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID") or (sys.argv[1] if len(sys.argv) > 1 else "")
    with get_client(sync_client=True) as c:
        run = c.read_flow_run(run_id)
        deployment = c.read_deployment(run.deployment_id) if run.deployment_id else None
        advice = (". Deploy again (`alignment deploy --pool ...`) to change what the pool runs; runs may not carry "
                  "job_variables")
        try:
            if deployment is None:
                raise served.NotServed("a flow run without a deployment is not a pool run")
            record = served.load(c.read_flow(deployment.flow_id).name, deployment.name)
            found = refusal(run, deployment, record)
        except served.NotServed as e:
            found, advice = [str(e)], ""  # its message says what to do
        if found:
            message = "refused before any flow code ran: " + "; ".join(found) + advice
            c.set_flow_run_state(run.id, Failed(message=message), force=True)
            print(message, file=sys.stderr)
            return 0  # the run is Failed with the reason; the worker need not report a crash on top
    os.environ["PREFECT__FLOW_ENTRYPOINT"] = record["entrypoint"]
    sys.argv = [sys.argv[0], str(run.id)]
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
