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
import os

from alignment.config import AllowRule
from alignment.config.loader import RecipeError
from flows import registry
from flows.registry import load_recipe, recipe_path
from flows.service import served
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

    from flows.service.server import is_local_api, watch

    made = deployments(args.recipe, parse_allow(args.allow, args.allow_file), args.allow_unsafe_parameters)
    # the authority for every run: written before the first deployment exists, digest in the runs' environment
    os.environ[served.DIGEST_ENV] = served.write("serve", [record for _, record in made])
    os.environ[served.BY_ENV] = "serve"
    if is_local_api():  # its polls carry the credential: stop the moment the port is not our server
        watch("serve")
    serve(*(d for d, _ in made), limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    main()
