"""What the RL stages (PPO, GRPO, RLOO) share: their typed inputs, checked before any model loads, the
means over their per-step history, and the policy they start from."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.data import load_data
from alignment.generation.base import Chat


@dataclass
class RLInputs:
    prompts: list[Chat]  # training prompts


def validate_rl(config) -> RLInputs:
    """Training prompts and the reward sources, checked before anything loads."""
    from alignment import launch, training
    from alignment.config import EngineKind
    from alignment.models import resolve_model_path

    training.check_train(config.options.train)
    if config.options.engine.kind is EngineKind.vllm and launch.plan(config.options.launch).multi_process and not _cuda():
        raise ValueError("engine.kind: 'vllm' with several processes is not supported on a CPU (each process "
                         "would start its own vLLM); use engine.kind: hf, or one process")
    prompts = load_data(config.prompts, "prompts")
    if config.reward.model is not None:
        name = config.reward.model.name
        if Path(name).is_dir() or name.startswith((".", "/")):
            resolve_model_path(config.reward.model)  # a clear error for a missing local reward model
    return RLInputs([r["prompt"] for r in prompts.rows])


def mean_of(history: list[dict[str, Any]], key: str, last: bool, n: int = 3) -> float | None:
    """Mean of `key` over the first (or last) `n` history rows that have it; None when none has it."""
    values = [h[key] for h in history if key in h]
    part = values[-n:] if last else values[:n]
    return sum(part) / len(part) if part else None


def load_policy(config):
    """(policy, reference or None, tokenizer): LoRA policies carry their reference (adapter disabled)."""
    from peft import get_peft_model

    from alignment.config import AdapterMode
    from alignment.models import load_model, load_tokenizer, peft_config

    tok = load_tokenizer(config.model)
    policy = load_model(config.model, config.options.adapter)
    lora = peft_config(config.options.adapter)
    ref = None
    if lora is None:
        ref = load_model(config.model)
        ref.requires_grad_(False)
    else:
        lora.lora_dropout = 0.0  # PPO's ratio must be 1 on the data it was sampled from
        if config.options.adapter.mode is AdapterMode.qlora:
            from peft import prepare_model_for_kbit_training

            policy = prepare_model_for_kbit_training(policy)
        policy = get_peft_model(policy, lora)
    if config.options.train.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    return policy, ref, tok


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
