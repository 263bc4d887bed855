"""The `constitutional-ai` flow: the whole method of the Constitutional AI paper, every step cached.

    prefect deployment run constitutional-ai/constitutional-ai
    prefect deployment run constitutional-ai/rerun-feedback         # one step again, the rest from cache

initial answers (generate) → critique_revise (SL-CAI) → sft on the revisions mixed with helpful data →
two samples per prompt from the SL-CAI model (generate) → feedback (RL-CAI soft labels) → RL-CAI:
`rl_method: dpo` trains DPO on the AI preferences; `rl_method: ppo` is the paper's method, a preference
model trained on the soft labels (`preference_model`) and PPO against it on the red-team prompts →
evaluate: SL-CAI vs the helpful model ("before") and RL-CAI vs SL-CAI ("after").
Editing a principle changes the constitution hash: critique_revise and everything after it run again,
the initial answers come from cache. No ML logic here; stages live in ``alignment.stages``.
"""

# No `from __future__ import annotations`: Prefect needs real annotations for pydantic parameters.
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from alignment.config import (
    ConstitutionalAIRecipe,
    CritiqueReviseStageConfig,
    DataSpec,
    DPOStageConfig,
    EvaluateStageConfig,
    FeedbackStageConfig,
    GenerateStageConfig,
    PPOStageConfig,
    RewardSources,
    RewardStageConfig,
    SFTStageConfig,
)
from alignment.constitution import load_constitution
from alignment.data import load_data
from alignment.recipes import validate_model
from flows import cai_reports, reports
from flows.tasks import Chain

FLOW = "constitutional-ai"
STEPS = ("initial", "critique_revise", "sl_cai", "samples", "feedback", "preference_model", "rl_cai", "evaluate_sl",
         "evaluate_rl")
Step = Literal["initial", "critique_revise", "sl_cai", "samples", "feedback", "preference_model", "rl_cai",
               "evaluate_sl", "evaluate_rl"]


def steps(recipe: ConstitutionalAIRecipe) -> tuple[str, ...]:
    """The steps this recipe runs, in order (what `rerun-<step>` deployments exist for)."""
    return tuple(s for s in STEPS if (s != "preference_model" or recipe.rl_method == "ppo")
                 and (recipe.evaluate is not None or not s.startswith("evaluate")))


def preflight(recipe: ConstitutionalAIRecipe) -> None:
    """Everything that can be checked before any model loads: constitution, prompt sets, mix data."""
    c = load_constitution(recipe.constitution.path)
    if not c.for_revision() or not c.for_feedback():
        raise ValueError(f"{recipe.constitution.path}: needs critique/revision principles and comparison principles")
    load_data(recipe.redteam_prompts, "prompts")
    load_data(recipe.eval_prompts, "prompts")
    if recipe.sft.mix_data:
        load_data(recipe.sft.mix_data, "sft")


@flow(name=FLOW, log_prints=True, persist_result=False,
      description="Constitutional AI: critique → revision (SL-CAI), AI feedback (RL-CAI), DPO, evaluation.")
def constitutional_ai(recipe: ConstitutionalAIRecipe, refresh: list[Step] | None = None,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    if overrides:
        recipe = validate_model(recipe.model_dump(mode="json"), ConstitutionalAIRecipe, "overrides", overrides=overrides)
    preflight(recipe)
    chain = Chain(list(refresh or []))
    run = chain.run

    def at(result: dict, name: str) -> DataSpec:
        return DataSpec(path=f"{result['path']}/{name}")

    def model_of(result: dict):
        return recipe.model.model_copy(update={"name": result["path"]})

    common = {"eval_prompts": recipe.eval_prompts, "generation": recipe.generation}
    initial = run("initial", "generate", GenerateStageConfig(
        model=recipe.model, prompts=recipe.redteam_prompts, engine=recipe.engine, **common))
    revised = run("critique_revise", "critique_revise", CritiqueReviseStageConfig(
        model=recipe.model, initial=at(initial, "completions.jsonl"), constitution=recipe.constitution,
        **{**dict(recipe.critique), "engine": recipe.engine}, **common))
    if revised["metrics"]["prompts_with_revision"] == 0:
        m = revised["metrics"]
        raise ValueError(f"critique_revise kept no revision ({m['filtered_empty']} empty, {m['filtered_unchanged']} unchanged, "
                         f"{m.get('filtered_copied', 0)} copied, {m['filtered_repeated']} repetitive of "
                         f"{m['revisions_total']}): nothing to "
                         "fine-tune on; see the cai-revisions table and try more rounds, a larger "
                         "generation.max_new_tokens or a stronger model")
    sl = run("sl_cai", "sft", SFTStageConfig(model=recipe.model, data=at(revised, "sft.jsonl"),
                                             **dict(recipe.sft), **common))
    samples = run("samples", "generate", GenerateStageConfig(
        model=model_of(sl), prompts=recipe.redteam_prompts, engine=recipe.engine, num_samples=2,
        eval_prompts=recipe.eval_prompts, generation=recipe.samples))
    labels = run("feedback", "feedback", FeedbackStageConfig(
        samples=at(samples, "completions.jsonl"), constitution=recipe.constitution, **dict(recipe.feedback),
        **common))
    if recipe.rl_method == "dpo":
        rl = run("rl_cai", "dpo", DPOStageConfig(model=model_of(sl), data=at(labels, "preferences.jsonl"),
                                                **dict(recipe.dpo), **common))
    else:  # the paper: a preference model on the soft labels, then PPO against it
        pm = run("preference_model", "reward", RewardStageConfig(
            model=model_of(sl), data=at(labels, "preferences.jsonl"), **dict(recipe.preference_model), **common))
        rl = run("rl_cai", "ppo", PPOStageConfig(model=model_of(sl), prompts=recipe.redteam_prompts,
                                                reward=RewardSources(model=model_of(pm)), **dict(recipe.ppo), **common))
    if recipe.evaluate is not None:
        run("evaluate_sl", "evaluate", EvaluateStageConfig(model=model_of(sl), reference=recipe.model,
                                                           **dict(recipe.evaluate), **common))
        run("evaluate_rl", "evaluate", EvaluateStageConfig(model=model_of(rl), reference=model_of(sl),
                                                           **dict(recipe.evaluate), **common))
    reports.publish_stages(chain.results, chain.states)
    cai_reports.publish(revised, load_constitution(recipe.constitution.path), create_markdown_artifact,
                        create_table_artifact)
    return {"stages": chain.summary(), "metrics": cai_reports.headline(chain.results)}
