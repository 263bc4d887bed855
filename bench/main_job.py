"""Where the main job's wall time goes: Prefect orchestration vs stage work, measured in one run.

    python bench/main_job.py                      # sft-to-dpo, every stage recomputed (refresh), then cached
    python bench/main_job.py --recipe tiny        # seconds; the overhead share is then large by design

It serves the recipe's deployments (starting the local server if needed), triggers the deployment the
way a user does, waits, and reads the task runs back from the API. Prints one JSON line per result:
- per stage: the task run's wall time and the stage's own compute time (its manifest ``duration_s``,
  measured inside ``run()``, i.e. the same work without Prefect: the baseline);
- the whole run: wall time from the trigger to the terminal state, the stage compute time, and the rest,
  which is orchestration (scheduling pick-up, the flow subprocess start, caching, artifacts);
- a second, unchanged run: wall time with every stage Cached.
"""

import argparse
import json
import platform
import time

from flows.service import serve, server


def machine() -> str:
    import os

    return f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}"


def trigger_and_wait(name: str, params: dict | None = None, timeout: float = 3600) -> tuple[str, float]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        dep = c.read_deployment_by_name(name)
        t0 = time.time()
        fr = c.create_flow_run_from_deployment(dep.id, parameters=params or {})
        while time.time() - t0 < timeout:
            run = c.read_flow_run(fr.id)
            if run.state and run.state.is_final():
                wall = time.time() - t0
                if not run.state.is_completed():
                    raise SystemExit(f"flow run {fr.id} ended {run.state.name}: {run.state.message}")
                return str(fr.id), wall
            time.sleep(0.5)
    raise SystemExit(f"flow run {fr.id} did not finish within {timeout} s")


def stage_rows(flow_run_id: str) -> list[dict]:
    """Each task run of the flow run (through Prefect's client: the local API is locked)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        trs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [{"stage": tr.name, "state": tr.state.name, "task_s": round(tr.total_run_time.total_seconds(), 2)}
            for tr in trs]


def compute_seconds(flow_run_id: str) -> dict[str, float]:
    """Each computed stage's own duration from its manifest (the stage work without Prefect)."""
    from alignment.artifacts import ArtifactStore

    store = ArtifactStore()
    out = {}
    for manifest in store.root.glob("*/*/manifest.json"):
        m = json.loads(manifest.read_text())
        if m.get("run", {}).get("flow_run_id") == flow_run_id:
            out[m["stage"]] = m["duration_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="sft-to-dpo")
    p.add_argument("--no-refresh", action="store_true", help="do not force the stages (measure as cached)")
    args = p.parse_args()
    server.apply_defaults()
    serve.ensure_serving([args.recipe])
    from flows.sft_to_dpo import STEPS

    refresh = [] if args.no_refresh else list(STEPS)  # every step recomputed
    fr, wall = trigger_and_wait("sft-to-dpo/sft-to-dpo", {"refresh": refresh})
    rows, compute = stage_rows(fr), compute_seconds(fr)
    for r in rows:
        r["compute_s"] = compute.get(r["stage"], 0.0)
        print(json.dumps({"bench": "main_job.stage", **r}))
    stage_s = sum(compute.values())
    print(json.dumps({"bench": "main_job", "recipe": args.recipe, "machine": machine(), "flow_run_id": fr,
                      "wall_s": round(wall, 2), "stage_compute_s": round(stage_s, 2),
                      "orchestration_s": round(wall - stage_s, 2),
                      "orchestration_pct": round(100 * (wall - stage_s) / wall, 2)}))
    fr2, wall2 = trigger_and_wait("sft-to-dpo/sft-to-dpo")
    states = {r["stage"]: r["state"] for r in stage_rows(fr2)}
    print(json.dumps({"bench": "main_job.cached_rerun", "recipe": args.recipe, "wall_s": round(wall2, 2),
                      "states": states, "ratio_to_first": round(wall2 / wall, 4)}))


if __name__ == "__main__":
    main()
