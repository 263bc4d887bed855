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

from prefect import serve

from alignment.config.loader import RecipeError, recipe_path
from flows.registry import flow_function, load_recipe, steps


def _for(recipe_name: str, expected: str) -> list:
    """The main deployment of the recipe's flow (named like the flow) and a rerun-<step> per step."""
    flow, recipe = load_recipe(recipe_name)
    if flow != expected:
        raise RecipeError(f"recipe {recipe_name!r} drives the {flow} flow; this slot serves {expected} "
                          f"(recipes named {expected}*.yaml, or any other name for sft-to-dpo)")
    flow_fn = flow_function(flow)
    params = {"recipe": recipe.model_dump(mode="json")}
    out = [flow_fn.to_deployment(name=flow, parameters=params, tags=["alignment"],
                                 description=f"{flow} on recipe {recipe_path(recipe_name)}")]
    for step in steps(flow, recipe):
        out.append(flow_fn.to_deployment(
            name=f"rerun-{step}", parameters={**params, "refresh": [step]}, tags=["alignment", "rerun"],
            description=f"Run {step} again (new artifact), reuse what comes before it from cache."))
    return out


def deployments(recipe_name: str = "sft-to-dpo", cai_recipe: str = "constitutional-ai",
                rlhf_recipe: str = "rlhf", iterative_recipe: str = "iterative-dpo") -> list:
    return (_for(recipe_name, "sft-to-dpo") + _for(cai_recipe, "constitutional-ai")
            + _for(rlhf_recipe, "rlhf") + _for(iterative_recipe, "iterative-dpo"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="sft-to-dpo", help="sft-to-dpo recipe (name under flows/recipes/ or path)")
    p.add_argument("--cai-recipe", default="constitutional-ai", help="constitutional-ai recipe")
    p.add_argument("--rlhf-recipe", default="rlhf", help="rlhf recipe")
    p.add_argument("--iterative-recipe", default="iterative-dpo", help="iterative-dpo recipe")
    p.add_argument("--limit", type=int, default=1, help="flow runs at a time (one machine, one model)")
    args = p.parse_args()
    serve(*deployments(args.recipe, args.cai_recipe, args.rlhf_recipe, args.iterative_recipe), limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    main()
