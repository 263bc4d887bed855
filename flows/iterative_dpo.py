"""The `iterative-dpo` flow: iterative (online) DPO with a reward model, every round a set of cached steps.

    prefect deployment run iterative-dpo/iterative-dpo                  # the recipe the deployment serves
    prefect deployment run iterative-dpo/rerun-round-2                  # round 2 and the rounds after it again
    prefect deployment run iterative-dpo/iterative-dpo -p overrides='{"iterate.rounds": 5}'

Steps: respond_base → (sft → respond_sft) → (reward) → calibrate → round-1 … round-N, where round n is
round-<n>-generate → round-<n>-pairs → round-<n>-dpo → round-<n>-respond → round-<n>-evaluate
(``flows.rounds``), then ``evaluate``: the best round's evaluation (cached) under the name gates read.
The reward model (trained here from the SFT model or `model`, or given as
`reward_model`, plus the `reward_mix` terms) labels every sample and scores the held-out answers; rounds
stop when the held-out reward has not improved for `iterate.patience` rounds. The UI shows the rounds
as a table and a chart (`iterative-dpo-rounds`). No ML logic here.
"""

# No `from __future__ import annotations`: Prefect needs real annotations for pydantic parameters.
from typing import Any

from prefect import flow

from alignment.config import (
    DataSpec,
    DPOOptions,
    IterativeDPORecipe,
    ModelSpec,
    PairsStageConfig,
    RewardOptions,
    RewardSources,
    RewardStageConfig,
    SFTOptions,
    SFTStageConfig,
    StageConfig,
)
from alignment.data import load_data
from alignment.stages import reward, sft
from flows import evaluation, rounds
from flows.chain import Chain, gated
from flows.evaluation import model_from, respond_config
from flows.reports import rounds as rounds_report
from flows.spec import Configs, FlowSpec

NAME = "iterative-dpo"
PARTS = ("generate", "pairs", "dpo", "respond", "evaluate")


def steps(recipe: IterativeDPORecipe) -> tuple[str, ...]:
    """The steps this recipe runs, in order (what `rerun-<step>` deployments exist for); a round is one step."""
    fixed = ("respond_base", *(("sft", "respond_sft") if recipe.sft else ()), *(("reward",) if recipe.reward else ()))
    models = ("base", *(("sft",) if recipe.sft else ()), "final")
    return (fixed + evaluation.steps(recipe, ()) + rounds.round_steps(recipe.iterate.rounds)
            + evaluation.benchmark_steps(recipe, models))


def gate_labels(recipe: IterativeDPORecipe) -> tuple[str, ...]:
    """Every step label a run may show (what gates may name): the fixed steps, each round's parts, and
    `evaluate`, the best round's evaluation again under one name."""
    fixed = tuple(s for s in steps(recipe) if not s.startswith("round-"))
    return fixed + rounds.round_labels(recipe.iterate.rounds, PARTS) + ("evaluate",)


class IterativeDPOConfigs(Configs):
    """The stage configs of one iterative-dpo run, from the recipe as the run sees it (made once:
    Chain.open); every round's DPO takes `dpo_options`."""

    recipe: IterativeDPORecipe

    def __init__(self, recipe: IterativeDPORecipe):
        super().__init__(recipe)
        self.sft_options = SFTOptions.of(recipe.sft, recipe.launch) if recipe.sft is not None else None
        self.reward_options = RewardOptions.of(recipe.reward, recipe.launch) if recipe.reward is not None else None
        self.dpo_options = DPOOptions.of(recipe.dpo, recipe.launch)

    def sft(self) -> SFTStageConfig:
        if self.recipe.sft is None or self.sft_options is None:
            raise ValueError("iterative-dpo: this recipe has no `sft` section (the rounds start from `model`)")
        return SFTStageConfig(model=self.recipe.model, data=self.recipe.sft.data, options=self.sft_options)

    def reward(self, start: ModelSpec | None = None) -> RewardStageConfig:
        """The reward model from `start` (the SFT model; the base model before it exists: preflight)."""
        if self.recipe.reward is None or self.reward_options is None:
            raise ValueError("iterative-dpo: this recipe has no `reward` section (it labels with reward_model or reward_mix)")
        section = self.recipe.reward
        return RewardStageConfig(model=start or self.recipe.model, data=section.data, eval_data=section.eval_data,
                                 options=self.reward_options)

    def pairs(self, samples: DataSpec, reward_model: ModelSpec | None) -> PairsStageConfig:
        sources = RewardSources(model=reward_model, **dict(self.recipe.reward_mix))
        return PairsStageConfig(samples=samples, reward=sources, min_margin=self.recipe.iterate.min_margin)

    def training(self) -> dict[str, StageConfig]:
        return {**({"sft": self.sft()} if self.recipe.sft is not None else {}),
                **({"reward": self.reward()} if self.recipe.reward is not None else {})}


def preflight(configs: IterativeDPOConfigs) -> None:
    """All data of all steps, checked before the first one starts (no model is loaded)."""
    recipe = configs.recipe
    if recipe.sft is not None:
        sft.validate(configs.sft())
    if recipe.reward is not None:
        reward.validate(configs.reward())
    load_data(recipe.prompts, "prompts")
    evaluation.preflight(recipe)


@flow(name=NAME, log_prints=False, persist_result=False,
      description="Iterative DPO: rounds of on-policy samples → reward-model pairs → DPO, with early stopping.")
@gated
def iterative_dpo(recipe: IterativeDPORecipe, refresh: list[str] | None = None,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or reuse) every step; `refresh` forces steps (``round-<n>`` forces round n and every round
    after it); `overrides` sets dotted keys, e.g. ``{"iterate.rounds": 5}``."""
    chain, recipe = Chain.open(FLOW, recipe, refresh, overrides)
    configs: IterativeDPOConfigs = chain.configs
    start = recipe.model
    start_answers = chain.run("respond_base", respond_config(recipe, recipe.model, evaluated=recipe.sft is None))
    if recipe.sft is not None:
        start = model_from(chain.run("sft", configs.sft()), recipe.model)
        start_answers = chain.run("respond_sft", respond_config(recipe, start))
    rm = recipe.reward_model
    if recipe.reward is not None:
        rm = model_from(chain.run("reward", configs.reward(start)), recipe.model)

    def pairs(n: int, samples: DataSpec):
        return "pairs", configs.pairs(samples, rm)

    outcome = rounds.run(chain, recipe, recipe.iterate, configs.dpo_options, start, start_answers, recipe.prompts, pairs, rm)
    rounds_report.publish(NAME, outcome)
    if outcome.best:  # the best round's evaluation under the name gates and the results card use (cached)
        chain.run("evaluate", outcome.rounds[outcome.best - 1].eval_config, same_as=rounds.label(outcome.best, "evaluate"))
    final = outcome.model(start)
    # the final model is the best round's (the start model when no round beat it: then cached, the same key)
    evaluation.run_benchmarks(chain, recipe, {"base": recipe.model, **({"sft": start} if recipe.sft is not None else {}),
                                              "final": final})
    return chain.close(recipe, final, None if outcome.best else "no round beat the start model on the held-out score",
                       rounds=outcome.table(), best_round=outcome.best, stopped=outcome.stopped, model=final.name)


def _refresh(recipe: IterativeDPORecipe, refresh: list[str]) -> list[str]:
    return rounds.expand_refresh(refresh, steps(recipe), recipe.iterate.rounds, PARTS)


FLOW = FlowSpec(name=NAME, recipe=IterativeDPORecipe, function=iterative_dpo, steps=steps, preflight=preflight,
                gate_labels=gate_labels, configs=IterativeDPOConfigs, expand_refresh=_refresh,
                default_recipe="iterative-dpo",
                description="rounds of on-policy samples → reward-model pairs → DPO, with early stopping")
