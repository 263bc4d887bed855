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
    IterativeDPORecipe,
    ModelSpec,
    PairsStageConfig,
    RewardSources,
    RewardStageConfig,
    SFTStageConfig,
)
from alignment.data import load_data
from alignment.stages import reward, sft
from flows import evaluation, rounds
from flows.chain import Chain, gated
from flows.evaluation import model_from, respond_config
from flows.reports import rounds as rounds_report
from flows.spec import FlowSpec
from flows.tasks import options

NAME = "iterative-dpo"
PARTS = ("generate", "pairs", "dpo", "respond", "evaluate")


def steps(recipe: IterativeDPORecipe) -> tuple[str, ...]:
    """The steps this recipe runs, in order (what `rerun-<step>` deployments exist for); a round is one step."""
    fixed = ("respond_base", *(("sft", "respond_sft") if recipe.sft else ()), *(("reward",) if recipe.reward else ()))
    return fixed + evaluation.steps(recipe, ()) + rounds.round_steps(recipe.iterate.rounds)


def gate_labels(recipe: IterativeDPORecipe) -> tuple[str, ...]:
    """Every step label a run may show (what gates may name): the fixed steps, each round's parts, and
    `evaluate`, the best round's evaluation again under one name."""
    fixed = tuple(s for s in steps(recipe) if not s.startswith("round-"))
    return fixed + rounds.round_labels(recipe.iterate.rounds, PARTS) + ("evaluate",)


def training_configs(recipe: IterativeDPORecipe, start: ModelSpec | None = None) -> dict[str, Any]:
    """SFT and reward configs; the reward model starts from `start` (the SFT model; the base model before
    it exists: preflight and `alignment validate`)."""
    out: dict[str, Any] = {}
    if recipe.sft is not None:
        out["sft"] = SFTStageConfig(model=recipe.model, **options(recipe.sft, recipe))
    if recipe.reward is not None:
        out["reward"] = RewardStageConfig(model=start or recipe.model, **options(recipe.reward, recipe))
    return out


def preflight(recipe: IterativeDPORecipe) -> None:
    """All data of all steps, checked before the first one starts (no model is loaded)."""
    configs = training_configs(recipe)
    if "sft" in configs:
        sft.validate(configs["sft"])
    if "reward" in configs:
        reward.validate(configs["reward"])
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
    start = recipe.model
    start_answers = chain.run("respond_base", respond_config(recipe, recipe.model, evaluated=recipe.sft is None))
    if recipe.sft is not None:
        start = model_from(chain.run("sft", training_configs(recipe)["sft"]), recipe.model)
        start_answers = chain.run("respond_sft", respond_config(recipe, start))
    rm = recipe.reward_model
    if recipe.reward is not None:
        rm = model_from(chain.run("reward", training_configs(recipe, start)["reward"]), recipe.model)
    sources = RewardSources(model=rm, **dict(recipe.reward_mix))

    def pairs(n: int, samples):
        return "pairs", PairsStageConfig(samples=samples, reward=sources, min_margin=recipe.iterate.min_margin)

    outcome = rounds.run(chain, recipe, recipe.iterate, recipe.dpo, start, start_answers, recipe.prompts, pairs, rm)
    rounds_report.publish(NAME, outcome)
    if outcome.best:  # the best round's evaluation under the name gates and the results card use (cached)
        chain.run("evaluate", outcome.rounds[outcome.best - 1].eval_config, same_as=rounds.label(outcome.best, "evaluate"))
    final = outcome.model(start)
    return chain.close(recipe, final, None if outcome.best else "no round beat the start model on the held-out score",
                       rounds=outcome.table(), best_round=outcome.best, stopped=outcome.stopped, model=final.name)


def _refresh(recipe: IterativeDPORecipe, refresh: list[str]) -> list[str]:
    return rounds.expand_refresh(refresh, steps(recipe), recipe.iterate.rounds, PARTS)


FLOW = FlowSpec(name=NAME, recipe=IterativeDPORecipe, function=iterative_dpo, steps=steps, preflight=preflight,
                gate_labels=gate_labels, training_configs=training_configs, expand_refresh=_refresh,
                default_recipe="iterative-dpo",
                description="rounds of on-policy samples → reward-model pairs → DPO, with early stopping")
