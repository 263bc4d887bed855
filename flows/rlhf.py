"""The `rlhf` flow: base model → SFT → reward model → PPO (or GRPO / RLOO) → evaluate, every stage cached.

    prefect deployment run rlhf/rlhf                                   # the recipe the deployment serves
    prefect deployment run rlhf/rlhf -p overrides='{"algorithm": "grpo"}'
    prefect deployment run rlhf/rerun-reward                           # reward again, then everything after it

The reward model starts from the SFT model (as in InstructGPT) and scores the RL rollouts; the weighted
`reward_mix` (rule, judge) is added to its score. The evaluate stage compares the RL policy with the SFT
model (judge, refusals, length) and scores both with the reward model. No ML logic here.
"""

# No `from __future__ import annotations`: Prefect needs real annotations for pydantic parameters.
from typing import Any, Literal

from prefect import flow

from alignment.config import (
    BaselineStageConfig,
    EvaluateStageConfig,
    GRPOStageConfig,
    PPOStageConfig,
    RewardSources,
    RewardStageConfig,
    RLHFRecipe,
    RLOOStageConfig,
    SFTStageConfig,
)
from alignment.data import load_data
from alignment.recipes import validate_model
from alignment.stages import reward, sft
from flows import reports
from flows.tasks import Chain

FLOW = "rlhf"
Step = Literal["baseline", "sft", "reward", "ppo", "grpo", "rloo", "evaluate"]
RL_CONFIG = {"ppo": PPOStageConfig, "grpo": GRPOStageConfig, "rloo": RLOOStageConfig}


def steps(recipe: RLHFRecipe) -> tuple[str, ...]:
    """The steps this recipe runs, in order (what `rerun-<step>` deployments exist for)."""
    return (("baseline",) + (("sft",) if recipe.sft is not None else ()) + ("reward", recipe.algorithm)
            + (("evaluate",) if recipe.evaluate is not None else ()))


def stage_configs(recipe: RLHFRecipe, sft_model=None, reward_model=None, policy=None) -> dict[str, Any]:
    """Every stage config of the recipe; upstream artifacts default to the base model (for preflight)."""
    common = {"eval_prompts": recipe.eval_prompts, "generation": recipe.generation}
    start = sft_model or recipe.model
    rm = reward_model or recipe.model
    out: dict[str, Any] = {"baseline": BaselineStageConfig(model=recipe.model, **common)}
    if recipe.sft is not None:
        out["sft"] = SFTStageConfig(model=recipe.model, **dict(recipe.sft), **common)
    out["reward"] = RewardStageConfig(model=start, **dict(recipe.reward), **common)
    sources = RewardSources(model=rm, **dict(recipe.reward_mix))
    options = getattr(recipe, recipe.algorithm)
    out[recipe.algorithm] = RL_CONFIG[recipe.algorithm](model=start, prompts=recipe.prompts, reward=sources,
                                                       **dict(options), **common)
    if recipe.evaluate is not None:
        settings = {**dict(recipe.evaluate), "reward_model": rm}
        out["evaluate"] = EvaluateStageConfig(model=policy or start, reference=start, **settings, **common)
    return out


def preflight(recipe: RLHFRecipe) -> None:
    """All data of all stages, checked before the first one starts (no model is loaded)."""
    from alignment.stages import evaluate

    configs = stage_configs(recipe)
    load_data(recipe.eval_prompts, "prompts")
    load_data(recipe.prompts, "prompts")
    if "sft" in configs:
        sft.validate(configs["sft"])
    reward.validate(configs["reward"])
    if "evaluate" in configs:
        evaluate.validate(configs["evaluate"])


@flow(name=FLOW, log_prints=True, persist_result=False,
      description="RLHF: SFT, reward model, PPO/GRPO/RLOO, then evaluation against the SFT model.")
def rlhf(recipe: RLHFRecipe, refresh: list[Step] | None = None,
         overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or reuse) every step; `refresh` forces steps (and so everything after them); `overrides`
    sets dotted keys, e.g. ``{"algorithm": "grpo", "ppo.iterations": 40}``."""
    if overrides:
        recipe = validate_model(recipe.model_dump(mode="json"), RLHFRecipe, "overrides", overrides=overrides)
    preflight(recipe)
    chain = Chain(list(refresh or []))

    def model_of(result: dict):
        return recipe.model.model_copy(update={"name": result["path"]})

    chain.run("baseline", "baseline", stage_configs(recipe)["baseline"])
    sft_model = None
    if recipe.sft is not None:
        sft_model = model_of(chain.run("sft", "sft", stage_configs(recipe)["sft"]))
    rm = model_of(chain.run("reward", "reward", stage_configs(recipe, sft_model)["reward"]))
    algo = recipe.algorithm
    policy = model_of(chain.run(algo, algo, stage_configs(recipe, sft_model, rm)[algo]))
    if recipe.evaluate is not None:
        chain.run("evaluate", "evaluate", stage_configs(recipe, sft_model, rm, policy)["evaluate"])

    headline = reports.publish(FLOW, chain.results, chain.states, headline_metrics(chain.results, algo))
    return {"stages": chain.summary(), "metrics": headline}


def headline_metrics(results: dict[str, dict[str, Any]], algorithm: str) -> dict[str, Any]:
    return {
        **reports.pick(results, "reward", ("heldout_accuracy", "heldout_accuracy_ci_low", "heldout_accuracy_ci_high",
                                           "heldout_length_baseline_accuracy", "heldout_pairs")),
        **reports.pick(results, algorithm, ("heldout_reward_before_mean", "heldout_reward_after_mean",
                                            "heldout_reward_gain_mean", "heldout_reward_gain_ci_low",
                                            "heldout_reward_gain_ci_high", "heldout_kl_k3_mean",
                                            "heldout_length_drift_ratio", "train_seconds")),
        **reports.pick(results, "evaluate", ("win_rate", "win_rate_ci_low", "win_rate_ci_high",
                                             "judge_calibration_accuracy", "reward_diff_mean", "reward_diff_ci_low",
                                             "reward_diff_ci_high", "length_drift_ratio")),
    }
