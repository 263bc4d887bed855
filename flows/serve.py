"""Serve the project's deployments from this process (``alignment serve`` starts it in the background).

    python -m flows.serve [--recipe sft-to-dpo]

Deployments (Prefect names are FLOW/DEPLOYMENT):
    sft-to-dpo/sft-to-dpo        the recipe, everything cached that can be
    sft-to-dpo/rerun-<stage>     the same with `refresh: [<stage>]`: that stage runs again, with a new
                                 artifact key, so the stages after it run too; the rest comes from cache
"""

import argparse

from prefect import serve

from alignment.config import STAGES, SftToDpoRecipe
from alignment.recipes import load_yaml_model, recipe_path
from flows.sft_to_dpo import FLOW, sft_to_dpo


def deployments(recipe_name: str = "sft-to-dpo") -> list:
    path = recipe_path(recipe_name)
    recipe = load_yaml_model(path, SftToDpoRecipe)
    params = {"recipe": recipe.model_dump(mode="json")}
    out = [sft_to_dpo.to_deployment(name=FLOW, parameters=params, tags=["alignment"],
                                    description=f"{FLOW} on recipe {path}")]
    for stage in STAGES:
        out.append(sft_to_dpo.to_deployment(
            name=f"rerun-{stage}", parameters={**params, "refresh": [stage]}, tags=["alignment", "rerun"],
            description=f"Run {stage} again (new artifact), reuse what comes before it from cache."))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="sft-to-dpo", help="recipe name under flows/recipes/ or a YAML path")
    p.add_argument("--limit", type=int, default=1, help="flow runs at a time (one machine, one model)")
    args = p.parse_args()
    serve(*deployments(args.recipe), limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    main()
