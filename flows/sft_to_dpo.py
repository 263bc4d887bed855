"""The main job: base model → SFT → DPO → evaluate (DPO vs SFT), every step a cached Prefect task.

    prefect deployment run sft-to-dpo/sft-to-dpo                       # the recipe the deployment serves
    prefect deployment run sft-to-dpo/sft-to-dpo -p overrides='{"dpo.beta": 0.2}'
    prefect deployment run sft-to-dpo/rerun-dpo                        # DPO again, the rest from cache

Steps: respond_base (the base model's held-out answers) → sft → respond_sft → dpo → respond_dpo →
calibrate (the judge's accuracy) → evaluate (DPO's answers vs SFT's) → benchmark_base, benchmark_sft,
benchmark_dpo (lm-evaluation-harness on the local tasks) → tax (what each task gained or lost from the
base model to DPO, paired, with intervals: what a gate on the alignment tax reads). The flow holds no ML logic: it
validates every step's inputs first (nothing runs on bad data), chains the stage tasks by passing
artifact paths (the next stage hashes the artifact id, not the path), and publishes the UI artifacts at
flow level so they show even when every step is cached.
"""

# No `from __future__ import annotations`: Prefect needs real annotations for pydantic parameters.
from typing import Any, Literal

from prefect import flow

from alignment.config import (
    DPOOptions,
    DPOStageConfig,
    ModelSpec,
    SFTOptions,
    SFTStageConfig,
    SftToDpoRecipe,
    StageConfig,
)
from alignment.stages import dpo, sft
from flows import evaluation
from flows.chain import Chain, gated
from flows.evaluation import model_from, respond_config
from flows.spec import Configs, FlowSpec

NAME = "sft-to-dpo"
STEPS = ("respond_base", "sft", "respond_sft", "dpo", "respond_dpo", "calibrate", "evaluate",
         "benchmark_base", "benchmark_sft", "benchmark_dpo", "tax")
MODELS = ("base", "sft", "dpo")  # the models benchmarked, in pipeline order
Step = Literal[STEPS]  # type: ignore[valid-type]  (the UI offers these in `refresh`)


def steps(recipe: SftToDpoRecipe) -> tuple[str, ...]:
    """The steps this recipe runs, in order (what `rerun-<step>` deployments exist for)."""
    return STEPS[:5] + evaluation.steps(recipe, ("evaluate",)) + evaluation.benchmark_steps(recipe, MODELS)


class SftToDpoConfigs(Configs):
    """The stage configs of one sft-to-dpo run, from the recipe as the run sees it (made once: Chain.open)."""

    recipe: SftToDpoRecipe

    def __init__(self, recipe: SftToDpoRecipe):
        super().__init__(recipe)
        self.sft_options = SFTOptions.of(recipe.sft, recipe.launch)
        self.dpo_options = DPOOptions.of(recipe.dpo, recipe.launch)

    def sft(self) -> SFTStageConfig:
        return SFTStageConfig(model=self.recipe.model, data=self.recipe.sft.data, options=self.sft_options)

    def dpo(self, start: ModelSpec | None = None) -> DPOStageConfig:
        """DPO from `start` (the SFT model; the base model before SFT exists: preflight)."""
        return DPOStageConfig(model=start or self.recipe.model, data=self.recipe.dpo.data,
                              eval_data=self.recipe.dpo.eval_data, options=self.dpo_options)

    def training(self) -> dict[str, StageConfig]:
        return {"sft": self.sft(), "dpo": self.dpo()}


def preflight(configs: SftToDpoConfigs) -> None:
    """Validate all data of all steps before the first one starts (cheap: no model is loaded)."""
    sft.validate(configs.sft())
    dpo.validate(configs.dpo())
    evaluation.preflight(configs.recipe)


# log_prints off: libraries print (dill disassembles functions under a stdout capture that Prefect's
# print patch defeats, TRL prints every step's dict); the run page shows our loggers and progress lines
@flow(name=NAME, log_prints=False, persist_result=False,
      description="Supervised fine-tuning, then DPO, then evaluation of DPO against SFT.")
@gated
def sft_to_dpo(recipe: SftToDpoRecipe, refresh: list[Step] | None = None,
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or reuse) every step; `refresh` forces steps; `overrides` sets dotted keys."""
    chain, recipe = Chain.open(FLOW, recipe, refresh, overrides)
    configs: SftToDpoConfigs = chain.configs
    chain.run("respond_base", respond_config(recipe, recipe.model, evaluated=False))
    sft_model = model_from(chain.run("sft", configs.sft()), recipe.model)
    sft_answers = chain.run("respond_sft", respond_config(recipe, sft_model))
    dpo_model = model_from(chain.run("dpo", configs.dpo(sft_model)), recipe.model)
    dpo_answers = chain.run("respond_dpo", respond_config(recipe, dpo_model))
    evaluation.run(chain, recipe, [("evaluate", dpo_answers, sft_answers)])
    evaluation.run_benchmarks(chain, recipe, dict(zip(MODELS, (recipe.model, sft_model, dpo_model), strict=True)))
    return chain.close(recipe, dpo_model)


FLOW = FlowSpec(name=NAME, recipe=SftToDpoRecipe, function=sft_to_dpo, steps=steps, preflight=preflight,
                configs=SftToDpoConfigs, default_recipe="sft-to-dpo",
                description="base model → SFT → DPO → evaluate (DPO vs SFT)")
