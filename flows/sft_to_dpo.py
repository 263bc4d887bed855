"""The main job: base model → SFT → DPO → evaluate (DPO vs SFT), every stage a cached Prefect task.

    prefect deployment run sft-to-dpo/sft-to-dpo                       # the recipe the deployment serves
    prefect deployment run sft-to-dpo/sft-to-dpo -p overrides='{"dpo.beta": 0.2}'
    prefect deployment run sft-to-dpo/rerun-dpo                        # DPO again, the rest from cache

The flow holds no ML logic: it validates every stage's inputs first (nothing runs on bad data), chains
the stage tasks by passing artifact paths (the next stage hashes the artifact id, not the path), and
publishes the UI artifacts at flow level so they show even when every stage is cached.
"""

# No `from __future__ import annotations`: Prefect needs real annotations for pydantic parameters.
from typing import Any, Literal

from prefect import flow

from alignment.config import SftToDpoRecipe
from alignment.data import load_data
from alignment.recipes import validate_model
from alignment.stages import dpo, evaluate, sft
from flows import reports
from flows.tasks import Chain

FLOW = "sft-to-dpo"
Stage = Literal["baseline", "sft", "dpo", "evaluate"]


def preflight(recipe: SftToDpoRecipe) -> None:
    """Validate all data of all stages before the first one starts (cheap: no model is loaded)."""
    load_data(recipe.eval_prompts, "prompts")
    sft.validate(recipe.stage_config("sft"))
    dpo.validate(recipe.stage_config("dpo"))
    if recipe.evaluate is not None:
        evaluate.validate(recipe.stage_config("evaluate"))


@flow(name=FLOW, log_prints=True, persist_result=False,
      description="Supervised fine-tuning, then DPO, then evaluation of DPO against SFT.")
def sft_to_dpo(recipe: SftToDpoRecipe, refresh: list[Stage] | None = None,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or reuse) baseline, SFT, DPO and evaluate; `refresh` forces stages; `overrides` sets dotted keys."""
    if overrides:
        recipe = validate_model(recipe.model_dump(mode="json"), SftToDpoRecipe, "overrides", overrides=overrides)
    preflight(recipe)
    chain = Chain(list(refresh or []))
    chain.run("baseline", "baseline", recipe.stage_config("baseline"))
    sft_result = chain.run("sft", "sft", recipe.stage_config("sft"))
    sft_model = recipe.model.model_copy(update={"name": sft_result["path"]})
    dpo_result = chain.run("dpo", "dpo", recipe.stage_config("dpo", model=sft_model))
    if recipe.evaluate is not None:
        dpo_model = recipe.model.model_copy(update={"name": dpo_result["path"]})
        chain.run("evaluate", "evaluate", recipe.stage_config("evaluate", model=dpo_model, reference=sft_model))

    headline = reports.publish(FLOW, chain.results, chain.states)
    return {"stages": chain.summary(), "metrics": headline}
