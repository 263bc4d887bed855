"""Serve the project's deployments from this process (``alignment serve`` starts it in the background).

    python -m flows.serve [--recipe sft-to-dpo]

Deployments (Prefect names are FLOW/DEPLOYMENT):
    sft-to-dpo/sft-to-dpo                  the recipe, everything cached that can be
    sft-to-dpo/rerun-<stage>               the same with `refresh: [<stage>]`: that stage runs again, with
                                           a new artifact key, so the stages after it run too
    constitutional-ai/constitutional-ai    the Constitutional AI recipe
    constitutional-ai/rerun-<step>         likewise, per step of the recipe (initial, critique_revise, sl_cai, ...)
    rlhf/rlhf                              SFT → reward model → PPO (or GRPO/RLOO) → evaluate
    rlhf/rerun-<step>                      likewise, per step of the recipe (baseline, sft, reward, ppo, evaluate)
"""

import argparse

from prefect import serve

from alignment.config import STAGES
from alignment.recipes import recipe_path
from flows.constitutional_ai import constitutional_ai
from flows.constitutional_ai import steps as cai_steps
from flows.registry import load_recipe
from flows.rlhf import rlhf, steps
from flows.sft_to_dpo import sft_to_dpo


def _for(flow_fn, name: str, steps, recipe_name: str) -> list:
    _, recipe = load_recipe(recipe_name)
    params = {"recipe": recipe.model_dump(mode="json")}
    out = [flow_fn.to_deployment(name=name, parameters=params, tags=["alignment"],
                                 description=f"{name} on recipe {recipe_path(recipe_name)}")]
    for step in steps:
        out.append(flow_fn.to_deployment(
            name=f"rerun-{step}", parameters={**params, "refresh": [step]}, tags=["alignment", "rerun"],
            description=f"Run {step} again (new artifact), reuse what comes before it from cache."))
    return out


def deployments(recipe_name: str = "sft-to-dpo", cai_recipe: str = "constitutional-ai",
                rlhf_recipe: str = "rlhf") -> list:
    return (_for(sft_to_dpo, "sft-to-dpo", STAGES, recipe_name)
            + _for(constitutional_ai, "constitutional-ai", cai_steps(load_recipe(cai_recipe)[1]), cai_recipe)
            + _for(rlhf, "rlhf", steps(load_recipe(rlhf_recipe)[1]), rlhf_recipe))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="sft-to-dpo", help="sft-to-dpo recipe (name under flows/recipes/ or path)")
    p.add_argument("--cai-recipe", default="constitutional-ai", help="constitutional-ai recipe")
    p.add_argument("--rlhf-recipe", default="rlhf", help="rlhf recipe")
    p.add_argument("--limit", type=int, default=1, help="flow runs at a time (one machine, one model)")
    args = p.parse_args()
    serve(*deployments(args.recipe, args.cai_recipe, args.rlhf_recipe), limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    main()
