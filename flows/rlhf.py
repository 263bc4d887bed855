"""The `rlhf` flow: base model → SFT → reward model → PPO (or GRPO / RLOO) → evaluate, every step cached.

    prefect deployment run rlhf/rlhf                                   # the recipe the deployment serves
    prefect deployment run rlhf/rlhf -p overrides='{"algorithm": "grpo"}'
    prefect deployment run rlhf/rerun-reward                           # reward again, then everything after it

Steps: respond_base → sft → respond_sft → reward → ppo|grpo|rloo → respond_<algorithm> → calibrate →
evaluate. The reward model starts from the SFT model (as in InstructGPT) and scores the RL rollouts; the
weighted `reward_mix` (rule, judge) is added to its score. `evaluate` compares the policy's held-out
answers with the SFT model's: the reward model scores both (the held-out reward gain), KL to the SFT
model on policy samples (`evaluate.kl`), judge, refusals and length. No ML logic here.
"""

# No `from __future__ import annotations`: Prefect needs real annotations for pydantic parameters.
from typing import Any, Literal

from prefect import flow

from alignment.config import (
    GRPOStageConfig,
    ModelSpec,
    PPOStageConfig,
    RewardOptions,
    RewardSources,
    RewardStageConfig,
    RLAlgorithm,
    RLHFRecipe,
    RLOOStageConfig,
    RLStageConfig,
    SFTOptions,
    SFTStageConfig,
    StageConfig,
)
from alignment.stages import reward, sft
from flows import evaluation
from flows.chain import Chain, gated
from flows.evaluation import model_from, respond_config
from flows.spec import Configs, FlowSpec

NAME = "rlhf"
RL_CONFIG = {RLAlgorithm.ppo: PPOStageConfig, RLAlgorithm.grpo: GRPOStageConfig, RLAlgorithm.rloo: RLOOStageConfig}
ALGORITHMS = tuple(a.value for a in RLAlgorithm)
Step = Literal[("respond_base", "sft", "respond_sft", "reward", *ALGORITHMS,  # type: ignore[valid-type]
                *(f"respond_{a}" for a in ALGORITHMS), "calibrate", "evaluate",
                "benchmark_base", "benchmark_sft", *(f"benchmark_{a}" for a in ALGORITHMS), "tax")]


def steps(recipe: RLHFRecipe) -> tuple[str, ...]:
    """The steps this recipe runs, in order (what `rerun-<step>` deployments exist for)."""
    algo = recipe.algorithm.value
    sft_steps = ("sft", "respond_sft") if recipe.sft is not None else ()
    models = ("base", *(("sft",) if recipe.sft is not None else ()), algo)
    return (("respond_base", *sft_steps, "reward", algo, f"respond_{algo}")
            + evaluation.steps(recipe, ("evaluate",)) + evaluation.benchmark_steps(recipe, models))


class RLHFConfigs(Configs):
    """The stage configs of one rlhf run, from the recipe as the run sees it (made once: Chain.open);
    upstream models default to the base model (preflight, before they exist)."""

    recipe: RLHFRecipe

    def __init__(self, recipe: RLHFRecipe):
        super().__init__(recipe)
        self.sft_options = SFTOptions.of(recipe.sft, recipe.launch) if recipe.sft is not None else None
        self.reward_options = RewardOptions.of(recipe.reward, recipe.launch)
        section = getattr(recipe, recipe.algorithm.value)
        self.rl_options = type(section).of(section, recipe.launch)

    def sft(self) -> SFTStageConfig:
        if self.recipe.sft is None or self.sft_options is None:
            raise ValueError("rlhf: this recipe has no `sft` section (RL starts from `model`)")
        return SFTStageConfig(model=self.recipe.model, data=self.recipe.sft.data, options=self.sft_options)

    def reward(self, start: ModelSpec | None = None) -> RewardStageConfig:
        """The reward model, from `start` (the SFT model, else the base model)."""
        section = self.recipe.reward
        return RewardStageConfig(model=start or self.recipe.model, data=section.data, eval_data=section.eval_data,
                                 options=self.reward_options)

    def rl(self, start: ModelSpec | None = None, reward_model: ModelSpec | None = None) -> RLStageConfig:
        """PPO, GRPO or RLOO (`algorithm`) from `start`, scored by `reward_model` plus `reward_mix`."""
        sources = RewardSources(model=reward_model or self.recipe.model, **dict(self.recipe.reward_mix))
        return RL_CONFIG[self.recipe.algorithm](model=start or self.recipe.model, prompts=self.recipe.prompts,
                                                reward=sources, options=self.rl_options)

    def training(self) -> dict[str, StageConfig]:
        sft_config = {"sft": self.sft()} if self.recipe.sft is not None else {}
        return {**sft_config, "reward": self.reward(), "rl": self.rl()}


def preflight(configs: RLHFConfigs) -> None:
    """All data of all steps, checked before the first one starts (no model is loaded)."""
    from alignment.rl.stage import validate_rl

    if configs.recipe.sft is not None:
        sft.validate(configs.sft())
    reward.validate(configs.reward())
    validate_rl(configs.rl())
    evaluation.preflight(configs.recipe)


# log_prints off: libraries print (dill disassembles functions under a stdout capture that Prefect's
# print patch defeats, TRL prints every step's dict); the run page shows our loggers and progress lines
@flow(name=NAME, log_prints=False, persist_result=False,
      description="RLHF: SFT, reward model, PPO/GRPO/RLOO, then evaluation against the SFT model.")
@gated
def rlhf(recipe: RLHFRecipe, refresh: list[Step] | None = None,
         overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or reuse) every step; `refresh` forces steps (and so everything after them); `overrides`
    sets dotted keys, e.g. ``{"algorithm": "grpo", "ppo.iterations": 40}``."""
    chain, recipe = Chain.open(FLOW, recipe, refresh, overrides)
    configs: RLHFConfigs = chain.configs
    start_answers = chain.run("respond_base", respond_config(recipe, recipe.model, evaluated=recipe.sft is None))
    sft_model = None
    if recipe.sft is not None:
        sft_model = model_from(chain.run("sft", configs.sft()), recipe.model)
        start_answers = chain.run("respond_sft", respond_config(recipe, sft_model))
    rm = model_from(chain.run("reward", configs.reward(sft_model)), recipe.model)
    algo = recipe.algorithm.value
    trained = model_from(chain.run(algo, configs.rl(sft_model, rm)), recipe.model)
    policy_answers = chain.run(f"respond_{algo}", respond_config(recipe, trained))
    evaluation.run(chain, recipe, [("evaluate", policy_answers, start_answers)], reward_model=rm)
    models = {"base": recipe.model, **({"sft": sft_model} if sft_model is not None else {}), algo: trained}
    evaluation.run_benchmarks(chain, recipe, models)
    return chain.close(recipe, trained)


FLOW = FlowSpec(name=NAME, recipe=RLHFRecipe, function=rlhf, steps=steps, preflight=preflight,
                configs=RLHFConfigs, default_recipe="rlhf",
                description="SFT → reward model → PPO/GRPO/RLOO → evaluate (policy vs SFT)")
