"""Deploy the flows to a Prefect work pool, so that a worker on a GPU machine runs them.

    alignment deploy --pool gpu                      # creates or updates the `process` pool, deploys
    alignment worker --pool gpu                      # on the GPU machine (same checkout path, same API)
    prefect deployment run sft-to-dpo/sft-to-dpo     # from anywhere that reaches the API

This is the alternative to `alignment serve` (which runs the flows in a process on this machine): the
same deployments (`<flow>/<flow>` and `<flow>/rerun-<step>`, the recipe as parameters), tied to a work
pool instead; deployments keep their names, so use one of `serve` and `deploy` per server.

What a pool runs cannot be re-pointed through the API:
- the pool's base job template is **literal**: the command (`python -m flows.service.pool_run`, this checkout's
  interpreter), the environment (the project's settings and the record digest) and the working
  directory (the checkout); no `{{ placeholders }}`, so a run's or a deployment's `job_variables` change
  nothing (and a run that carries any is refused);
- `alignment deploy` records every deployment it creates (``flows.service.served``: the recipe, the allowlist,
  the entrypoint, pull steps and job variables as created), and `flows.service.pool_run` checks the deployment
  against that record before any flow code loads: a PATCHed entrypoint or pull step is refused and never
  runs; the flow is loaded from the recorded entrypoint, never from the API's;
- `alignment worker` (``flows.service.worker``) ignores the pool's template altogether (a PATCH of the pool can
  change what a plain `prefect worker` runs, not what ours runs).
"""

import argparse
import os
import sys

from flows.registry import load_recipe, recipe_path
from flows.service import served
from flows.service.policy import rules_for
from flows.service.serve import recipes_to_serve
from flows.service.server import ROOT, ensure_server

CARRIED = ("ALIGNMENT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK",
           "HF_HUB_OFFLINE", "HF_HOME", "TORCH_EXTENSIONS_DIR")


def by(pool: str) -> str:
    return f"pool-{pool}"


def command() -> list[str]:
    """What a pool's flow run process is: this checkout's interpreter running the checking entry point."""
    return [sys.executable, "-m", "flows.service.pool_run"]


def run_environment(pool: str) -> dict[str, str]:
    """The literal environment of a pool's flow runs (besides the worker's own): the project's settings and
    which served records the run is checked against."""
    env = {k: os.environ[k] for k in CARRIED if k in os.environ}
    return {**env, served.BY_ENV: by(pool), served.DIGEST_ENV: served.digest(by(pool))}


def literal_template(pool: str) -> dict:
    """A `process` pool's base job template with nothing a job variable can fill in."""
    from prefect.utilities.processutils import command_to_string
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["job_configuration"].update(command=command_to_string(command()), env=run_environment(pool),
                                         working_dir=str(ROOT), stream_output=True)
    props = template["variables"]["properties"]
    template["variables"]["properties"] = {k: props[k] for k in ("name", "labels") if k in props}
    return template


def ensure_pool(name: str) -> None:
    """Create the `process` pool, or set its base job template, to `literal_template(name)`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    template = literal_template(name)
    with get_client(sync_client=True) as c:
        try:
            pool = c.read_work_pool(name)
        except ObjectNotFound:
            c.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            return
        if pool.type != "process":
            raise ValueError(f"--pool {name}: a {pool.type!r} pool; `alignment deploy` makes `process` pools (use another name)")
        c.update_work_pool(name, WorkPoolUpdate(base_job_template=template))


def deploy(pool: str, recipes: list[str]) -> list[str]:
    """Deploy each recipe's flow (and its rerun-<step> deployments) to `pool`, record what was deployed,
    and give the pool the literal template; returns the deployment names."""
    from prefect.client.orchestration import get_client

    ensure_pool(pool)  # exists before the deployments name it; its template gets the final digest below
    made = []
    loaded = [(name, *load_recipe(name)) for name in recipes]
    deployed_flows = {spec.name for _, spec, _ in loaded}
    for recipe_name, spec, recipe in loaded:
        flow, entrypoint = spec.name, spec.entrypoint
        remote = spec.function.from_source(source=str(ROOT), entrypoint=entrypoint)
        pull = remote._storage.to_pull_step()  # noqa: SLF001 - what `deploy` sends as the pull steps
        pull = pull if isinstance(pull, list) else [pull]
        params = {"recipe": recipe.model_dump(mode="json")}
        rules = [r.model_dump(mode="json") for r in rules_for(recipe)]
        for name, extra in [(flow, {}), *((f"rerun-{s}", {"refresh": [s]}) for s in spec.steps(recipe))]:
            deployment_id = remote.deploy(name=name, work_pool_name=pool, parameters={**params, **extra}, build=False,
                                          push=False, print_next_steps=False, tags=["alignment", "pool"],
                                          description=f"{flow} on recipe {recipe_path(recipe_name)} (pool {pool})")
            with get_client(sync_client=True) as c:  # the API holds what we sent, or something changed it
                d = c.read_deployment(deployment_id)
            if (d.entrypoint, d.pull_steps, d.job_variables or None) != (entrypoint, pull, None):
                raise RuntimeError(f"deployment {flow}/{name} changed while it was being created (entrypoint "
                                   f"{d.entrypoint!r}, pull steps {d.pull_steps!r}); not recording it. Deploy again")
            made.append({"flow": flow, "deployment": name, "parameters": {**params, **extra}, "rules": rules,
                         "unsafe": False, "entrypoint": entrypoint, "pull_steps": pull, "job_variables": None})
    kept = [r for r in served.records(by(pool)) if r["flow"] not in deployed_flows]  # the other flows' stand
    served.write(by(pool), kept + made)
    ensure_pool(pool)
    return [f"{r['flow']}/{r['deployment']}" for r in made]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", required=True, help="work pool name (created as a `process` pool if missing)")
    p.add_argument("--recipe", action="append", default=[], help="recipes to deploy (each drives the flow its "
                   "`flow:` key names; default: every flow's default recipe)")
    args = p.parse_args(argv)
    ensure_server()
    names = deploy(args.pool, args.recipe or recipes_to_serve())
    print(f"deployed {len(names)} deployments to pool {args.pool!r}: {', '.join(names[:3])}, ...\n"
          f"start a worker where the GPUs are:  alignment worker --pool {args.pool}")


if __name__ == "__main__":
    main()
