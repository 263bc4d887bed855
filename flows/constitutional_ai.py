"""The `constitutional-ai` flow: the whole method of the Constitutional AI paper, every step cached.

    prefect deployment run constitutional-ai/constitutional-ai
    prefect deployment run constitutional-ai/rerun-feedback         # one step again, the rest from cache

initial answers (generate) → critique_revise (SL-CAI) → sft on the revisions mixed with helpful data →
two samples per prompt from the SL-CAI model (generate) → feedback (RL-CAI soft labels) → RL-CAI:
`rl_method: dpo` trains DPO on the AI preferences; `rl_method: ppo` is the paper's method, a preference
model trained on the soft labels (`preference_model`) and PPO against it on the red-team prompts;
`rl_method: iterative-dpo` repeats sample → feedback → DPO from the current policy in rounds
(`round-<n>-*`, ``flows.rounds``), stopping when the held-out score stops improving.
Held-out answers of the helpful, SL-CAI and RL-CAI models (`respond_*`) → calibrate → evaluate_sl
(SL-CAI vs the helpful model, "before") and evaluate_rl (RL-CAI vs SL-CAI, "after"); with `ppo` the
preference model scores the held-out answers too.
Editing a principle changes the constitution hash: critique_revise and everything after it run again,
the initial answers come from cache. No ML logic here; stages live in ``alignment.stages``.
"""

# No `from __future__ import annotations`: Prefect needs real annotations for pydantic parameters.
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from alignment.config import (
    ConstitutionalAIRecipe,
    CritiqueReviseStageConfig,
    DataSpec,
    DPOOptions,
    DPOStageConfig,
    FeedbackStageConfig,
    GenerateStageConfig,
    ModelSpec,
    PPOOptions,
    PPOStageConfig,
    RewardOptions,
    RewardSources,
    RewardStageConfig,
    SFTOptions,
    SFTStageConfig,
)
from alignment.constitution import load_constitution
from alignment.data import load_data
from flows import evaluation, rounds
from flows.chain import Chain, gated
from flows.evaluation import model_from, respond_config
from flows.reports import cai as cai_report
from flows.reports import rounds as rounds_report
from flows.spec import Configs, FlowSpec
from flows.tasks import data_of

NAME = "constitutional-ai"
STEPS = ("respond_helpful", "initial", "critique_revise", "sl_cai", "respond_sl_cai", "samples", "feedback",
         "preference_model", "rl_cai", "respond_rl_cai", "calibrate", "evaluate_sl", "evaluate_rl")


MODELS = ("base", "sl_cai", "rl_cai")  # the models benchmarked (base: the helpful model the flow starts from)
ROUND_PARTS = ("generate", "feedback", "dpo", "respond", "evaluate")  # rl_method iterative-dpo (flows.rounds)


def steps(recipe: ConstitutionalAIRecipe) -> tuple[str, ...]:
    """The steps this recipe runs, in order (what `rerun-<step>` deployments exist for); with
    `rl_method: iterative-dpo` the rounds (`round-<n>`) replace samples, feedback and rl_cai."""
    core = tuple(s for s in STEPS[:10] if s != "preference_model" or recipe.rl_method == "ppo")
    if recipe.rl_method == "iterative-dpo":  # respond_rl_cai is then the best round's answers again (cached)
        core = (*STEPS[:5], *rounds.round_steps(recipe.iterate.rounds))
    return (core + evaluation.steps(recipe, ("evaluate_sl", "evaluate_rl"))
            + evaluation.benchmark_steps(recipe, MODELS))


def gate_labels(recipe: ConstitutionalAIRecipe) -> tuple[str, ...]:
    """Every step label a run may show (what gates may name)."""
    if recipe.rl_method != "iterative-dpo":
        return steps(recipe)
    return (tuple(s for s in steps(recipe) if not s.startswith("round-"))
            + rounds.round_labels(recipe.iterate.rounds, ROUND_PARTS) + ("respond_rl_cai",))


class ConstitutionalAIConfigs(Configs):
    """The stage configs of one constitutional-ai run, from the recipe as the run sees it (made once:
    Chain.open). Every training stage's data is an upstream artifact (revisions, AI feedback), so
    ``training()`` has nothing to report before the run."""

    recipe: ConstitutionalAIRecipe

    def __init__(self, recipe: ConstitutionalAIRecipe):
        super().__init__(recipe)
        launch = recipe.launch
        self.critique_options = recipe.critique.model_copy(update={"engine": recipe.engine})  # one engine serves all
        self.sft_options = SFTOptions.of(recipe.sft, launch)
        self.dpo_options = DPOOptions.of(recipe.dpo, launch)
        self.preference_options = RewardOptions.of(recipe.preference_model, launch)
        self.ppo_options = PPOOptions.of(recipe.ppo, launch)

    def critique_revise(self, initial: DataSpec) -> CritiqueReviseStageConfig:
        r = self.recipe
        return CritiqueReviseStageConfig(model=r.model, initial=initial, constitution=r.constitution,
                                         generation=r.generation, options=self.critique_options)

    def sl_cai(self, revisions: DataSpec) -> SFTStageConfig:
        return SFTStageConfig(model=self.recipe.model, data=revisions, options=self.sft_options)

    def feedback(self, samples: DataSpec) -> FeedbackStageConfig:
        return FeedbackStageConfig(samples=samples, constitution=self.recipe.constitution, options=self.recipe.feedback)

    def dpo(self, start: ModelSpec, preferences: DataSpec) -> DPOStageConfig:
        return DPOStageConfig(model=start, data=preferences, options=self.dpo_options)

    def preference_model(self, start: ModelSpec, preferences: DataSpec) -> RewardStageConfig:
        return RewardStageConfig(model=start, data=preferences, options=self.preference_options)

    def ppo(self, start: ModelSpec, preference_model: ModelSpec) -> PPOStageConfig:
        return PPOStageConfig(model=start, prompts=self.recipe.redteam_prompts,
                              reward=RewardSources(model=preference_model), options=self.ppo_options)


def preflight(configs: ConstitutionalAIConfigs) -> None:
    """Everything that can be checked before any model loads: constitution, prompt sets, mix data."""
    recipe = configs.recipe
    c = load_constitution(recipe.constitution.path)
    if not c.for_revision() or not c.for_feedback():
        raise ValueError(f"{recipe.constitution.path}: needs critique/revision principles and comparison principles")
    load_data(recipe.redteam_prompts, "prompts")
    if recipe.sft.mix_data:
        load_data(recipe.sft.mix_data, "sft")
    evaluation.preflight(recipe)


# log_prints off: libraries print (dill disassembles functions under a stdout capture that Prefect's
# print patch defeats, TRL prints every step's dict); the run page shows our loggers and progress lines
@flow(name=NAME, log_prints=False, persist_result=False,
      description="Constitutional AI: critique → revision (SL-CAI), AI feedback (RL-CAI), DPO, evaluation.")
@gated
def constitutional_ai(recipe: ConstitutionalAIRecipe, refresh: list[str] | None = None,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or reuse) every step; `refresh` forces steps (``round-<n>``: that round and the later ones,
    with `rl_method: iterative-dpo`); `overrides` sets dotted keys."""
    chain, recipe = Chain.open(FLOW, recipe, refresh, overrides)
    configs: ConstitutionalAIConfigs = chain.configs
    run = chain.run
    helpful_answers = run("respond_helpful", respond_config(recipe, recipe.model))
    initial = run("initial", GenerateStageConfig(model=recipe.model, prompts=recipe.redteam_prompts,
                                                 engine=recipe.engine, generation=recipe.generation))
    revised = run("critique_revise", configs.critique_revise(data_of(initial, "generate", "completions")))
    if revised["metrics"]["prompts_with_revision"] == 0:
        m = revised["metrics"]
        raise ValueError(f"critique_revise kept no revision ({m['filtered_empty']} empty, {m['filtered_unchanged']} unchanged, "
                         f"{m['filtered_copied']} copied, {m['filtered_repeated']} repetitive of "
                         f"{m['revisions_total']}): nothing to "
                         "fine-tune on; see the cai-revisions table and try more rounds, a larger "
                         "generation.max_new_tokens or a stronger model")
    sl = model_from(run("sl_cai", configs.sl_cai(data_of(revised, "critique_revise", "sft"))), recipe.model)
    sl_answers = run("respond_sl_cai", respond_config(recipe, sl))
    if recipe.rl_method == "iterative-dpo":
        return _iterated(chain, recipe, revised, sl, sl_answers, helpful_answers)
    samples = run("samples", GenerateStageConfig(model=sl, prompts=recipe.redteam_prompts, engine=recipe.engine,
                                                 num_samples=2, generation=recipe.samples))
    labels = run("feedback", configs.feedback(data_of(samples, "generate", "completions")))
    preferences = data_of(labels, "feedback", "preferences")
    preference_model = None
    if recipe.rl_method == "dpo":
        rl = run("rl_cai", configs.dpo(sl, preferences))
    else:  # the paper: a preference model on the soft labels, then PPO against it
        preference_model = model_from(run("preference_model", configs.preference_model(sl, preferences)), recipe.model)
        rl = run("rl_cai", configs.ppo(sl, preference_model))
    rl_model = model_from(rl, recipe.model)
    rl_answers = run("respond_rl_cai", respond_config(recipe, rl_model))
    evaluation.run(chain, recipe, [("evaluate_sl", sl_answers, helpful_answers), ("evaluate_rl", rl_answers, sl_answers)],
                   reward_model=preference_model)
    evaluation.run_benchmarks(chain, recipe, dict(zip(MODELS, (recipe.model, sl, rl_model), strict=True)))
    return _finish(chain, recipe, revised, rl_model)


def _iterated(chain: Chain, recipe: ConstitutionalAIRecipe, revised: dict, sl, sl_answers: dict, helpful_answers: dict):
    """RL-CAI as rounds: samples of the current policy → the constitution's feedback → DPO, each round's
    held-out answers scored against the SL-CAI model's (`flows.rounds`)."""
    configs: ConstitutionalAIConfigs = chain.configs

    def feedback(n: int, samples: DataSpec):
        return "feedback", configs.feedback(samples)

    reward_model = recipe.evaluate.reward_model if recipe.evaluate is not None else None
    outcome = rounds.run(chain, recipe, recipe.iterate, configs.dpo_options, sl, sl_answers, recipe.redteam_prompts,
                         feedback, reward_model)
    rl_model = outcome.model(sl)
    rl_answers = chain.run("respond_rl_cai", respond_config(recipe, rl_model),  # the best round's answers (cached)
                           same_as=rounds.label(outcome.best, "respond") if outcome.best else "respond_sl_cai")
    evaluation.run(chain, recipe, [("evaluate_sl", sl_answers, helpful_answers), ("evaluate_rl", rl_answers, sl_answers)],
                   reward_model=reward_model)
    evaluation.run_benchmarks(chain, recipe, dict(zip(MODELS, (recipe.model, sl, rl_model), strict=True)))
    rounds_report.publish(NAME, outcome)
    return _finish(chain, recipe, revised, rl_model, extra={"best_round": outcome.best, "stopped": outcome.stopped},
                   nothing_new=None if outcome.best else "no RL round beat the SL-CAI model on the held-out score")


def _finish(chain: Chain, recipe: ConstitutionalAIRecipe, revised: dict, rl_model, extra: dict | None = None,
            nothing_new: str | None = None):
    """The constitution's report, then the chain's ending (reports, gates, approval, promote), unless RL made
    `nothing_new`."""
    cai_report.publish(revised, load_constitution(recipe.constitution.path), create_markdown_artifact,
                       create_table_artifact)
    return chain.close(recipe, rl_model, nothing_new, **(extra or {}))


def _refresh(recipe: ConstitutionalAIRecipe, refresh: list[str]) -> list[str]:
    return rounds.expand_refresh(refresh, steps(recipe), recipe.iterate.rounds, ROUND_PARTS)


FLOW = FlowSpec(name=NAME, recipe=ConstitutionalAIRecipe, function=constitutional_ai, steps=steps,
                configs=ConstitutionalAIConfigs, preflight=preflight, gate_labels=gate_labels, expand_refresh=_refresh,
                default_recipe="constitutional-ai",
                description="critique → revision (SL-CAI), AI feedback (RL-CAI), DPO or PPO, evaluation")
