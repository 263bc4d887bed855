"""Deploy the flows to a Prefect work pool, so that a `prefect worker` on a GPU machine runs them.

    alignment deploy --pool gpu                      # creates the `process` pool if missing, deploys
    prefect worker start --pool gpu                  # on the GPU machine (same checkout path, same API)
    prefect deployment run sft-to-dpo/sft-to-dpo     # from anywhere that reaches the API

This is the alternative to `alignment serve` (which runs the flows in a process on this machine): the
same deployments (`<flow>/<flow>` and `<flow>/rerun-<step>`, the recipe as parameters), tied to a work
pool instead. A flow run starts as a subprocess of the worker, in the checkout (`working_dir`), with the
project's settings (`ALIGNMENT_HOME`, Prefect's result storage) in its environment; deployments keep
their names, so use one of `serve` and `deploy` per server. Kubernetes or Docker pools work the same
way (README: a GPU job variable).
"""

import argparse
import os

from alignment.config.loader import recipe_path
from flows.registry import FLOWS, flow_function, load_recipe, steps
from flows.server import ROOT, apply_defaults

CARRIED = ("ALIGNMENT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK",
           "HF_HUB_OFFLINE", "HF_HOME", "TORCH_EXTENSIONS_DIR")


def ensure_pool(name: str, kind: str = "process") -> None:
    """Create the work pool with its type's default job template, unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as c:
        try:
            c.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template() if kind == "process" else None
            c.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template or {}))


def deploy(pool: str, recipes: list[str]) -> list[str]:
    """Deploy each recipe's flow (and its rerun-<step> deployments) to `pool`; returns their names."""
    apply_defaults()
    ensure_pool(pool)
    job = {"working_dir": str(ROOT), "env": {k: os.environ[k] for k in CARRIED if k in os.environ}}
    names = []
    for recipe_name in recipes:
        flow, recipe = load_recipe(recipe_name)
        module, fn, _ = FLOWS[flow]
        remote = flow_function(flow).from_source(source=str(ROOT), entrypoint=f"{module.replace('.', '/')}.py:{fn}")
        params = {"recipe": recipe.model_dump(mode="json")}
        for name, extra in [(flow, {}), *((f"rerun-{s}", {"refresh": [s]}) for s in steps(flow, recipe))]:
            remote.deploy(name=name, work_pool_name=pool, parameters={**params, **extra}, job_variables=job,
                          build=False, push=False, print_next_steps=False, tags=["alignment", "pool"],
                          description=f"{flow} on recipe {recipe_path(recipe_name)} (pool {pool})")
            names.append(f"{flow}/{name}")
    return names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", required=True, help="work pool name (created as a `process` pool if missing)")
    p.add_argument("--recipe", action="append", help="recipes to deploy (default: sft-to-dpo, constitutional-ai, rlhf, iterative-dpo)")
    args = p.parse_args(argv)
    names = deploy(args.pool, args.recipe or list(FLOWS))
    print(f"deployed {len(names)} deployments to pool {args.pool!r}: {', '.join(names[:3])}, ...\n"
          f"start a worker where the GPUs are:  prefect worker start --pool {args.pool}")


if __name__ == "__main__":
    main()
