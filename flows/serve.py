"""Serve the project's deployments from this process (``alignment serve`` starts it in the background).

    python -m flows.serve [--recipe sft-to-dpo]

Deployments (Prefect names are FLOW/DEPLOYMENT):
    sft-to-dpo/sft-to-dpo                  the recipe, everything cached that can be
    sft-to-dpo/rerun-<step>                the same with `refresh: [<step>]`: that step runs again, with a
                                           new artifact key, so the steps after it run too
    constitutional-ai/constitutional-ai    the Constitutional AI recipe
    constitutional-ai/rerun-<step>         likewise, per step of the recipe (initial, critique_revise, sl_cai, ...)
    rlhf/rlhf                              SFT → reward model → PPO (or GRPO/RLOO) → evaluate
    rlhf/rerun-<step>                      likewise, per step of the recipe (sft, reward, ppo, evaluate, ...)
    iterative-dpo/iterative-dpo            rounds of sample → reward-model pairs → DPO, early stopping
    iterative-dpo/rerun-round-<n>          round n and every round after it again (earlier rounds from cache)
"""

import argparse
import os

from alignment.config import AllowRule
from alignment.config.loader import RecipeError, recipe_path
from flows import served
from flows.policy import rules_for
from flows.registry import flow_function, load_recipe, steps


def _for(recipe_name: str, expected: str, extra: list[AllowRule] = (), unsafe: bool = False) -> list:
    """The main deployment of the recipe's flow (named like the flow) and a rerun-<step> per step, each
    with the record of what it serves (``flows.served``): (deployment, record) pairs."""
    flow, recipe = load_recipe(recipe_name)
    if flow != expected:
        raise RecipeError(f"recipe {recipe_name!r} drives the {flow} flow; this slot serves {expected} "
                          f"(recipes named {expected}*.yaml, or any other name for sft-to-dpo)")
    rules = [r.model_dump(mode="json") for r in rules_for(recipe, [r for r in extra if _names_a_key(r, recipe)])]
    flow_fn = flow_function(flow)
    params = {"recipe": recipe.model_dump(mode="json")}
    out = [(flow, params, dict(tags=["alignment"], description=f"{flow} on recipe {recipe_path(recipe_name)}"))]
    for step in steps(flow, recipe):
        out.append((f"rerun-{step}", {**params, "refresh": [step]}, dict(
            tags=["alignment", "rerun"], description=f"Run {step} again (new artifact), reuse what comes before it "
            "from cache.")))
    made = []
    for name, parameters, extra_args in out:
        record = {"flow": flow, "deployment": name, "parameters": parameters, "rules": rules, "unsafe": unsafe,
                  "entrypoint": None, "pull_steps": None, "job_variables": None}  # serve runs its own flow objects
        made.append((flow_fn.to_deployment(name=name, parameters=parameters, **extra_args), record))
    return made


def _names_a_key(rule: AllowRule, recipe) -> bool:
    """A command-line rule applies to the recipes that have the key (one --allow for all four flows)."""
    from flows.policy import flatten, matches

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


def deployments(recipe_name: str = "sft-to-dpo", cai_recipe: str = "constitutional-ai",
                rlhf_recipe: str = "rlhf", iterative_recipe: str = "iterative-dpo",
                extra: list[AllowRule] = (), unsafe: bool = False) -> list:
    made = (_for(recipe_name, "sft-to-dpo", extra, unsafe) + _for(cai_recipe, "constitutional-ai", extra, unsafe)
            + _for(rlhf_recipe, "rlhf", extra, unsafe) + _for(iterative_recipe, "iterative-dpo", extra, unsafe))
    for rule in extra:
        if not any(any(r["key"] == rule.key for r in record["rules"]) for _, record in made):
            raise RecipeError(f"--allow {rule.key}: no served recipe has that key")
    return made


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="sft-to-dpo", help="sft-to-dpo recipe (name under flows/recipes/ or path)")
    p.add_argument("--cai-recipe", default="constitutional-ai", help="constitutional-ai recipe")
    p.add_argument("--rlhf-recipe", default="rlhf", help="rlhf recipe")
    p.add_argument("--iterative-recipe", default="iterative-dpo", help="iterative-dpo recipe")
    p.add_argument("--limit", type=int, default=1, help="flow runs at a time (one machine, one model)")
    p.add_argument("--allow", action="append", default=[], help="KEY[=MIN..MAX]: deployment runs may change KEY")
    p.add_argument("--allow-file", action="append", default=[], help="KEY: runs may point KEY at a project file")
    p.add_argument("--allow-unsafe-parameters", action="store_true", help="runs may change any recipe key")
    args = p.parse_args()
    from prefect import serve

    from flows.server import is_local_api, watch

    made = deployments(args.recipe, args.cai_recipe, args.rlhf_recipe, args.iterative_recipe,
                       parse_allow(args.allow, args.allow_file), args.allow_unsafe_parameters)
    # the authority for every run: written before the first deployment exists, digest in the runs' environment
    os.environ[served.DIGEST_ENV] = served.write("serve", [record for _, record in made])
    os.environ[served.BY_ENV] = "serve"
    if is_local_api():  # its polls carry the credential: stop the moment the port is not our server
        watch("serve")
    serve(*(d for d, _ in made), limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    main()
