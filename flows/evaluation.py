"""The held-out steps every flow shares, built from the recipe's common part (``RecipeBase``):

- ``respond``: a model's answers to the held-out prompts (and, for the models an evaluation compares,
  to the red-team and benign prompts), after each stage that makes a model;
- ``calibrate``: the evaluation judge's own accuracy, once per judge;
- ``evaluate``: a policy's answers against a reference's;
- ``benchmark_<label>``: capability benchmarks (lm-evaluation-harness) of the start model and each model
  a stage makes, and ``tax``: per task, what the chain of models gained or lost (paired, with intervals).

None of them feeds a training stage, so changing `eval_prompts` or anything under `evaluate` reruns
only these steps. No ML logic here: the stages live in ``alignment.stages``.
"""

from typing import Any

from alignment.config import (
    ArtifactRef,
    BenchmarkStageConfig,
    CalibrateStageConfig,
    EvaluateStageConfig,
    ModelSpec,
    RecipeBase,
    RespondStageConfig,
    TaxStageConfig,
)
from alignment.stages import benchmark, calibrate, respond
from flows.chain import Chain


def model_from(result: dict[str, Any], like: ModelSpec) -> ModelSpec:
    """The model a stage result holds, with the other settings (dtype, trust) of `like`."""
    return like.model_copy(update={"name": result["path"], "revision": None})


def respond_config(recipe: RecipeBase, model: ModelSpec, evaluated: bool = True) -> RespondStageConfig:
    """Answers of `model` to the held-out prompts; `evaluated` adds the red-team and benign sets that an
    evaluation reads (the base model of sft-to-dpo only fills the table's first column)."""
    sets = {"heldout": recipe.eval_prompts}
    if evaluated and recipe.evaluate is not None:
        for name, spec in (("redteam", recipe.evaluate.redteam_prompts), ("benign", recipe.evaluate.benign_prompts)):
            if spec is not None:
                sets[name] = spec
    return RespondStageConfig(model=model, sets=sets, generation=recipe.generation, engine=recipe.engine)


def calibrate_config(recipe: RecipeBase) -> CalibrateStageConfig | None:
    ev = recipe.evaluate
    if ev is None or ev.judge is None or ev.judge.calibration is None:
        return None
    return CalibrateStageConfig(judge=ev.judge.pairwise(), data=ev.judge.calibration, bootstrap=ev.bootstrap)


def evaluate_config(recipe: RecipeBase, policy: dict[str, Any], reference: dict[str, Any],
                    calibration: dict[str, Any] | None, reward_model: ModelSpec | None = None) -> EvaluateStageConfig:
    """Policy vs reference answers (two respond results); `reward_model` (a flow's own) overrides the recipe's."""
    ev = recipe.evaluate
    return EvaluateStageConfig(
        policy=ArtifactRef(path=policy["path"]), reference=ArtifactRef(path=reference["path"]),
        judge=ev.judge.pairwise() if ev.judge is not None else None,
        calibration=ArtifactRef(path=calibration["path"]) if calibration is not None else None,
        at_chance=ev.judge.at_chance if ev.judge is not None else "skip", bootstrap=ev.bootstrap,
        reward_model=reward_model or ev.reward_model, kl=ev.kl)


def steps(recipe: RecipeBase, evaluate_labels: tuple[str, ...]) -> tuple[str, ...]:
    """The evaluation steps a recipe runs: calibrate (when the judge has a calibration set), then each
    evaluate label; none without an evaluate section."""
    if recipe.evaluate is None:
        return ()
    return (("calibrate",) if calibrate_config(recipe) is not None else ()) + evaluate_labels


def benchmark_steps(recipe: RecipeBase, labels: tuple[str, ...]) -> tuple[str, ...]:
    """`benchmark_<label>` for each model label (start first), then `tax`; none without a benchmark section."""
    if recipe.benchmark is None:
        return ()
    return (*(f"benchmark_{label}" for label in labels), "tax")


def benchmark_config(recipe: RecipeBase, model: ModelSpec) -> BenchmarkStageConfig:
    return BenchmarkStageConfig(model=model, options=recipe.benchmark)


def run_benchmarks(chain: Chain, recipe: RecipeBase, models: dict[str, ModelSpec]) -> dict[str, Any] | None:
    """Benchmark each model (label → model, in pipeline order: the start first, the final model last), then
    the alignment tax over the chain; the tax result, or None without a benchmark section."""
    if recipe.benchmark is None:
        return None
    results = {label: chain.run(f"benchmark_{label}", benchmark_config(recipe, m)) for label, m in models.items()}
    return chain.run("tax", TaxStageConfig(models={label: ArtifactRef(path=r["path"]) for label, r in results.items()},
                                           bootstrap=recipe.evaluate.bootstrap if recipe.evaluate else 1000))


def run(chain: Chain, recipe: RecipeBase, comparisons: list[tuple[str, dict[str, Any], dict[str, Any]]],
        reward_model: ModelSpec | None = None) -> None:
    """Calibrate the judge once, then evaluate each (label, policy answers, reference answers)."""
    if recipe.evaluate is None:
        return
    cal_config = calibrate_config(recipe)
    calibration = chain.run("calibrate", cal_config) if cal_config is not None else None
    for label, policy, reference in comparisons:
        chain.run(label, evaluate_config(recipe, policy, reference, calibration, reward_model))


def preflight(recipe: RecipeBase) -> None:
    """The held-out, red-team, benign and calibration data, checked before the first stage runs."""
    respond.validate(respond_config(recipe, recipe.model))
    if recipe.benchmark is not None:
        benchmark.validate(benchmark_config(recipe, recipe.model))
    cal_config = calibrate_config(recipe)
    if cal_config is not None:
        calibrate.validate(cal_config)
