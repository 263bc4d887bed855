"""Serve the project's deployments from this process (``alignment serve`` starts it in the background).

    python -m flows.service.serve [--recipe RECIPE ...]

Every flow the registry finds (``flows.registry``) is served, each with one recipe: a recipe named with
`--recipe` serves the flow its `flow:` key names; every other flow serves its default recipe. Per flow
(Prefect names are FLOW/DEPLOYMENT):
    <flow>/<flow>                          the recipe, everything cached that can be
    <flow>/rerun-<step>                    the same with `refresh: [<step>]`: that step runs again, with a
                                           new artifact key, so the steps after it run too (for the
                                           round flows, rerun-round-<n>: round n and every round after it)
"""

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

from alignment.config import AllowRule
from alignment.config.loader import RecipeError
from flows import registry
from flows.registry import load_recipe, recipe_path
from flows.service import served, server
from flows.service.policy import rules_for


def recipes_to_serve(named: list[str] = ()) -> list[str]:
    """One recipe per flow: the named ones (each serves the flow its `flow:` key names), then each other
    flow's default recipe. Two recipes of one flow are refused (their deployments would share names)."""
    chosen: dict[str, str] = {}
    for name in named:
        flow = registry.flow_of(recipe_path(name))
        if flow in chosen:
            raise RecipeError(f"--recipe {name!r} and --recipe {chosen[flow]!r} both drive the {flow} flow; a "
                              "server serves one recipe per flow (its deployments are named after the flow)")
        chosen[flow] = name
    for flow, spec in registry.flows().items():
        if flow not in chosen and spec.default_recipe is not None:
            chosen[flow] = spec.default_recipe
    return list(chosen.values())


def _for(recipe_name: str, extra: list[AllowRule] = (), unsafe: bool = False) -> list:
    """The main deployment of the recipe's flow (named like the flow) and a rerun-<step> per step, each
    with the record of what it serves (``flows.service.served``): (deployment, record) pairs."""
    spec, recipe = load_recipe(recipe_name)
    flow = spec.name
    rules = [r.model_dump(mode="json") for r in rules_for(recipe, [r for r in extra if _names_a_key(r, recipe)])]
    params = {"recipe": recipe.model_dump(mode="json")}
    out = [(flow, params, dict(tags=["alignment"], description=f"{flow} on recipe {recipe_path(recipe_name)}"))]
    for step in spec.steps(recipe):
        out.append((f"rerun-{step}", {**params, "refresh": [step]}, dict(
            tags=["alignment", "rerun"], description=f"Run {step} again (new artifact), reuse what comes before it "
            "from cache.")))
    made = []
    for name, parameters, extra_args in out:
        record = {"flow": flow, "deployment": name, "parameters": parameters, "rules": rules, "unsafe": unsafe,
                  "entrypoint": None, "pull_steps": None, "job_variables": None}  # serve runs its own flow objects
        made.append((spec.function.to_deployment(name=name, parameters=parameters, **extra_args), record))
    return made


def _names_a_key(rule: AllowRule, recipe) -> bool:
    """A command-line rule applies to the recipes that have the key (one --allow for every flow)."""
    from flows.service.policy import flatten, matches

    return any(matches(rule.key, k) for k in flatten(recipe.model_dump(mode="json")))


def parse_allow(allow: list[str], files: list[str]) -> list[AllowRule]:
    """`--allow KEY[=MIN..MAX]` and `--allow-file KEY` as allowlist rules."""
    rules = []
    for text in allow:
        key, _, bounds = text.partition("=")
        lo, sep, hi = bounds.partition("..")
        if bounds and not sep:
            raise RecipeError(f"--allow {text!r}: expected KEY or KEY=MIN..MAX (e.g. dpo.beta=0.05..0.5)")
        try:
            rules.append(AllowRule(key=key, min=float(lo) if lo else None, max=float(hi) if hi else None))
        except ValueError as e:
            raise RecipeError(f"--allow {text!r}: {e}") from None
    return rules + [AllowRule(key=key, file=True) for key in files]


def deployments(recipes: list[str] = (), extra: list[AllowRule] = (), unsafe: bool = False) -> list:
    """Every flow's deployments (``recipes_to_serve(recipes)``), with their records."""
    made = [d for name in recipes_to_serve(recipes) for d in _for(name, extra, unsafe)]
    for rule in extra:
        if not any(any(r["key"] == rule.key for r in record["rules"]) for _, record in made):
            raise RecipeError(f"--allow {rule.key}: no served recipe has that key")
    return made


def _fingerprint(recipes: list[str], policy: list[str]) -> str:
    """Recipes, flow and library code, the parameter policy and the server's credential: a change of any
    means the serve process must restart (its runs are checked against the recipe it loaded, as the recipe
    schema of that moment wrote it out: a new option's default would read as an override)."""
    h = hashlib.sha256(b"".join(recipe_path(r).read_bytes() for r in recipes))
    h.update("\0".join(policy).encode())
    h.update(server.credential().encode())
    h.update(os.environ.get("ALIGNMENT_FLOWS", "").encode())  # which flows the registry finds
    code = set((server.ROOT / "flows").rglob("*.py")) | set((server.ROOT / "alignment").rglob("*.py")) | {Path(sys.modules[s.module].__file__) for s in registry.flows().values()}
    for p in sorted(code):  # the project's flow code and every flow module found elsewhere (plugins, yours)
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def ensure_serving(recipes: list[str] = (), allow: list[str] = (), allow_files: list[str] = (),
                   unsafe: bool = False, timeout: float = 120.0) -> list[str]:
    """Run `python -m flows.service.serve` in the background, one recipe per flow (`recipes`, then each
    other flow's default: ``serve.recipes_to_serve``); restart it if a recipe, the flow code or the
    parameter policy (`allow`: KEY[=MIN..MAX], `allow_files`: KEY, `unsafe`) changed. Returns the recipes
    served."""
    recipes = recipes_to_serve(list(recipes))
    # every recipe and allowlist checks out before anything starts (errors name the rule and the fix)
    names = [f"{d.flow_name}/{d.name}" for d, _ in deployments(recipes, parse_allow(list(allow), list(allow_files)), unsafe)]
    server.ensure_server()
    policy = [*(f"--allow={a}" for a in allow), *(f"--allow-file={a}" for a in allow_files)]
    policy += ["--allow-unsafe-parameters"] if unsafe else []
    fp = _fingerprint(recipes, policy)
    pid = server._pid("serve")
    if pid is not None:
        if server.processes.record("serve")[1] == [fp]:
            return recipes
        active = _active_runs()
        if active:
            raise RuntimeError(f"the serve process has {active} run(s) in progress and the recipes, flow code or "
                               "parameter policy changed; wait for them (`alignment wait`) or stop it (`alignment "
                               "stop`), then serve")
        server.stop("serve")
    started = time.time()
    server._spawn("serve", [sys.executable, "-m", "flows.service.serve", *(f"--recipe={r}" for r in recipes), *policy],
           extra=fp)
    while time.time() < started + timeout:
        if server._pid("serve") is None:
            raise RuntimeError(f"the serve process exited; {server._log_tail('serve')}")
        if _deployments_updated_since(started, names):
            return recipes
        time.sleep(1.0)
    raise RuntimeError(f"deployments were not registered within {timeout:.0f} s; see {server._run_dir() / 'serve.log'}")


def _deployments_updated_since(t: float, names: list[str]) -> bool:
    """Every one of `names` is registered (updated) since `t`: the serve process registers them one by
    one, and a `prefect deployment run` of one not yet there fails."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as c:
            for name in names:
                d = c.read_deployment_by_name(name)
                if d.updated is None or d.updated.timestamp() < t - 1:
                    return False
    except Exception:
        return False
    return True


def _active_runs() -> int:
    """Flow runs of our flows that are running or about to (so the serve process must not restart)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    try:
        with get_client(sync_client=True) as c:
            return len(c.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])))))
    except Exception:  # noqa: BLE001 - no server to ask: nothing is running
        return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", action="append", default=[], help="a recipe to serve (name under flows/recipes/ "
                   "or path; its `flow:` key says which flow); other flows serve their default recipe")
    p.add_argument("--limit", type=int, default=1, help="flow runs at a time (one machine, one model)")
    p.add_argument("--allow", action="append", default=[], help="KEY[=MIN..MAX]: deployment runs may change KEY")
    p.add_argument("--allow-file", action="append", default=[], help="KEY: runs may point KEY at a project file")
    p.add_argument("--allow-unsafe-parameters", action="store_true", help="runs may change any recipe key")
    args = p.parse_args()
    from prefect import serve

    made = deployments(args.recipe, parse_allow(args.allow, args.allow_file), args.allow_unsafe_parameters)
    # the authority for every run: written before the first deployment exists, digest in the runs' environment
    os.environ[served.DIGEST_ENV] = served.write("serve", [record for _, record in made])
    os.environ[served.BY_ENV] = "serve"
    if server.is_local_api():  # its polls carry the credential: stop the moment the port is not our server
        server.watch("serve")
    serve(*(d for d, _ in made), limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    main()
