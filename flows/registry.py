"""Which flow a recipe belongs to: recipes named ``constitutional-ai*.yaml`` drive the constitutional-ai
flow, ``rlhf*.yaml`` the rlhf flow, ``iterative-dpo*.yaml`` the iterative-dpo flow, every other recipe
drives sft-to-dpo. One place that maps names to flows, recipe models and
preflight checks, for the CLI, the serve process and the tests."""

from importlib import import_module
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from alignment.config import ConstitutionalAIRecipe, IterativeDPORecipe, RLHFRecipe, SftToDpoRecipe
from alignment.config.loader import load_yaml_model, recipe_path

FLOWS: dict[str, tuple[str, str, type[BaseModel]]] = {
    "sft-to-dpo": ("flows.sft_to_dpo", "sft_to_dpo", SftToDpoRecipe),
    "constitutional-ai": ("flows.constitutional_ai", "constitutional_ai", ConstitutionalAIRecipe),
    "rlhf": ("flows.rlhf", "rlhf", RLHFRecipe),
    "iterative-dpo": ("flows.iterative_dpo", "iterative_dpo", IterativeDPORecipe),
}


def flow_name_for(path: Path) -> str:
    stem = Path(path).stem
    for flow in ("constitutional-ai", "rlhf", "iterative-dpo"):
        if stem.startswith(flow):
            return flow
    return "sft-to-dpo"


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> tuple[str, BaseModel]:
    path = recipe_path(name_or_path)
    flow = flow_name_for(path)
    return flow, load_yaml_model(path, FLOWS[flow][2], overrides)


def flow_module(flow: str):
    return import_module(FLOWS[flow][0])


def flow_function(flow: str):
    module, fn, _ = FLOWS[flow]
    return getattr(import_module(module), fn)


def preflight(flow: str, recipe: BaseModel) -> None:
    """The flow's own checks (every data file, constitution, calibration set), the gates' steps, then every
    model path and launch config the recipe names: all before any model loads."""
    from flows.gates import check_recipe

    module = flow_module(flow)
    module.preflight(recipe)
    check_recipe(recipe, getattr(module, "gate_labels", module.steps)(recipe))
    check_paths(recipe)


def check_paths(value: Any, where: str = "") -> None:
    """Local model directories exist and are models; accelerate configs exist and make sense."""
    from alignment import launch
    from alignment.config import LaunchSpec, ModelSpec
    from alignment.models import check_model

    if isinstance(value, ModelSpec):
        check_model(value, where.rstrip(".") or "model")
    elif isinstance(value, LaunchSpec):
        launch.plan(value, where.rstrip("."))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            check_paths(getattr(value, name), f"{where}{name}.")


def steps(flow: str, recipe: BaseModel) -> tuple[str, ...]:
    """The steps a recipe runs in its flow, in order (each flow module's ``steps``)."""
    return flow_module(flow).steps(recipe)


def data_report(flow: str, recipe: BaseModel) -> list[str]:
    """Per training stage's data: rows, identical pairs dropped, rows over `train.max_length` (estimated)."""
    from alignment.data import estimated_tokens, load_data

    builder = getattr(flow_module(flow), "training_configs", None)
    out = []
    for name, config in (builder(recipe) if builder else {}).items():
        spec = getattr(config, "data", None)
        if spec is None:
            continue
        kind = "sft" if name == "sft" else "preference"
        data = load_data(spec, kind)
        over = sum(estimated_tokens(r) > config.train.max_length for r in data.rows)
        pairs = f", {data.dropped_identical} identical pairs dropped" if kind == "preference" else ""
        out.append(f"{name}.data {spec.path}: {len(data.rows)} rows used{pairs}, {over} over train.max_length = "
                   f"{config.train.max_length} (estimated; the trainer truncates or drops them)")
    return out
