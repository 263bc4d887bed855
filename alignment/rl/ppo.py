"""PPO for language models (ours: TRL 1.16 has none). The math is in ``ppo_math``; this is the loop.

One iteration:
1. **Rollout**: `rollout_batch` prompts (a seeded pass over the prompt set), one sampled response each,
   from the generation engine: `hf` samples with the live policy; `vllm` gets the policy's current
   weights (LoRA merged) loaded before it samples.
2. **Score**: the reward function (reward model / rule / judge) on each response; responses cut at
   `max_new_tokens` without EOS lose `missing_eos_penalty`.
3. **Evaluate**: one no-grad forward gives the old log-probs and values; the reference log-probs come
   from the same weights with the LoRA adapter disabled (no second copy) or, for full fine-tuning,
   from a frozen copy. Per-token rewards = ``-kl_coef * KL`` + the score on the last token; GAE;
   advantages whitened.
4. **Update**: `ppo_epochs` passes over shuffled minibatches (`train.batch_size`, with `grad_accum`):
   clipped policy loss + `vf_coef` × clipped value loss, gradient clipping, AdamW.
5. **Log**: mean score, KL, entropy, clip fractions, value loss, explained variance, response length;
   a table of sample rollouts every `sample_every` iterations; a checkpoint every `train.checkpoint_every`.

Several processes (`accelerate launch`): the policy and its value head are one module
(``PolicyAndValue``), so DDP synchronises, and DeepSpeed ZeRO-2/3 shards, both; each process takes its
share of the rollout prompts; generation under ZeRO-3 gathers the weights first (TRL's
``unwrap_model_for_generation``); gradient accumulation and clipping go through accelerate (DeepSpeed
clips itself, from ``max_grad_norm``).

The model side (value head, policy + value module, batch tensors, forward passes) is ``ppo_model``.

Resuming: every random draw of iteration i is seeded from (seed, i), and a checkpoint holds accelerate's
state (weights, optimizer, scheduler, RNG; DeepSpeed's own sharded checkpoint under ZeRO), the KL
coefficient and the metrics so far; a run that resumes from iteration k's checkpoint therefore computes
what an uninterrupted run computes (tested). The policy runs in eval mode throughout (no dropout), so the
probability ratio is exactly 1 at the first minibatch of each iteration.
"""

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alignment.config import PPOStageConfig
from alignment.generation.base import Chat
from alignment.rl import ppo_math as pm
from alignment.rl.ppo_model import Batch, PolicyAndValue, ValueHead, build_batch, reference_logp

STATE_FILE = "state.json"


def _rng_seed(seed: int, iteration: int, what: int) -> int:
    return (seed * 1_000_003 + iteration * 7919 + what) % (2**31)


class PPOLoop:
    """The PPO loop over a policy (a PEFT model or a full model), its value head and a reward function."""

    def __init__(self, config: PPOStageConfig, policy, tokenizer, reward_fn, prompts: list[Chat],
                 ref_model=None, engine=None, progress: Callable[[float, dict], None] | None = None,
                 trackers: list[str] | tuple[str, ...] = (), run_name: str | None = None):
        from accelerate import Accelerator
        from transformers import get_scheduler

        from alignment.training import tracker_dir

        self.config, self.tok, self.reward_fn, self.prompts = config, tokenizer, reward_fn, prompts
        self.is_peft = hasattr(policy, "disable_adapter")
        if not self.is_peft and ref_model is None:
            raise ValueError("ppo: full fine-tuning needs a frozen reference model (ref_model)")
        from alignment import launch

        launch.init_cpu_state()
        self.accelerator = Accelerator(log_with=list(trackers) or None,
                                       project_dir=str(tracker_dir(run_name or "ppo")) if trackers else None,
                                       gradient_accumulation_steps=config.options.train.grad_accum)
        if trackers:
            self.accelerator.init_trackers("alignment-ppo", config=_flat(config.model_dump(mode="json")),
                                           init_kwargs={t: {"name": run_name} for t in ("wandb", "trackio") if run_name})
        launch.check_world(self.accelerator.num_processes)
        _deepspeed_settings(self.accelerator, config)
        torch.manual_seed(config.options.train.seed)
        hidden = policy.config.get_text_config().hidden_size
        model = PolicyAndValue(policy, ValueHead(hidden).to(next(policy.parameters()).device))
        head = list(model.value_head.parameters())
        trunk = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("value_head.")]
        opt = torch.optim.AdamW([{"params": trunk}, {"params": head, "lr": config.options.value_learning_rate
                                                     or config.options.train.learning_rate}],
                                lr=config.options.train.learning_rate, weight_decay=config.options.train.weight_decay)
        updates = config.options.iterations * config.options.ppo_epochs * math.ceil(
            config.options.rollout_batch / (config.options.train.batch_size * config.options.train.grad_accum))
        sched = get_scheduler(config.options.train.lr_scheduler, opt, num_warmup_steps=round(config.options.train.warmup_ratio * updates),
                              num_training_steps=updates)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, opt, sched)
        self.ref_model = _prepare_reference(ref_model, self.accelerator)
        self.engine, self.progress = engine, progress
        self.kl = pm.KLController(config.options.kl_coef, config.options.kl_target, config.options.kl_horizon)
        self.moments = pm.RunningMoments()  # of the scores, for `reward_norm`
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []

    @property
    def policy(self):
        """The policy itself (unwrapped from DDP/DeepSpeed)."""
        return self.accelerator.unwrap_model(self.model).policy

    # -- rollout ---------------------------------------------------------------------------------
    def _prompt_batch(self, iteration: int) -> list[Chat]:
        """Prompts of `iteration`: consecutive slices of seeded shuffles of the prompt set (one per pass)."""
        n, k = len(self.prompts), self.config.options.rollout_batch
        out: list[Chat] = []
        start = iteration * k
        while len(out) < k:
            epoch, offset = divmod(start + len(out), n)
            order = list(range(n))
            random.Random(_rng_seed(self.config.options.train.seed, epoch, 1)).shuffle(order)
            out += [self.prompts[i] for i in order[offset : offset + k - len(out)]]
        return out

    def _generate(self, chats: list[Chat], seed: int):
        spec = self.config.options.rollout.model_copy(update={"seed": seed, "batch_size": max(self.config.options.rollout.batch_size,
                                                                                      len(chats))})
        if self.engine is not None:  # vLLM: load the current weights first
            self.engine.load_weights(policy_weights(self.policy))
            return self.engine.generate(chats, spec)
        from trl.models.utils import unwrap_model_for_generation

        from alignment.generation.hf import HFEngine

        # under ZeRO-3 the weights are gathered for the whole generation (else every token is a collective)
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            return HFEngine(unwrapped.policy, self.tok, static_cache="off").generate(chats, spec)

    def rollout(self, iteration: int) -> Batch:
        acc = self.accelerator  # several processes: each takes its share of the prompts
        chats = self._prompt_batch(iteration)[acc.process_index :: acc.num_processes]
        completions = self._generate(chats, _rng_seed(self.config.options.train.seed, iteration, 2))
        eos = self.tok.eos_token_id
        ended = [bool(c.token_ids) and c.token_ids[-1] == eos for c in completions]
        responses = [c.token_ids or [eos] for c in completions]
        ids, attn, resp, mask = build_batch(self.tok, chats, responses, self.accelerator.device)
        texts = [c.text for c in completions]
        total, terms = self.reward_fn(chats, texts)
        scores = torch.tensor(total, dtype=torch.float32, device=ids.device)
        if self.config.options.missing_eos_penalty is not None:
            scores = scores - self.config.options.missing_eos_penalty * (~torch.tensor(ended, device=ids.device)).float()
        return Batch(chats, texts, ids, attn, resp, mask, scores, terms, ended)

    # -- one iteration ---------------------------------------------------------------------------
    def _normalised(self, scores: torch.Tensor) -> torch.Tensor:
        """`reward_norm`: the running moments take this batch (every process's scores, reduced in float64,
        so all normalise alike), then scale it."""
        n, total = self.accelerator.reduce(torch.stack([torch.tensor(float(len(scores)), device=scores.device),
                                                        scores.sum()]).double(), "sum").tolist()
        spread = self.accelerator.reduce(((scores.double() - total / n) ** 2).sum(), "sum").item()
        self.moments.update_from(int(n), total / n, spread / n)
        return self.moments.normalise(scores)

    def step(self) -> dict[str, Any]:
        cfg, it = self.config, self.iteration
        torch.manual_seed(_rng_seed(cfg.options.train.seed, it, 0))
        t0 = time.time()
        b = self.rollout(it)
        t_rollout = time.time() - t0
        T, mask = b.mask.shape[1], b.mask
        self.model.eval()
        with torch.no_grad():
            old = self.model(b.input_ids, b.attention_mask, T, cfg.options.rollout.temperature, with_entropy=True)
            ref_logp = reference_logp(self.policy, self.ref_model, b.input_ids, b.attention_mask, T,
                                      cfg.options.rollout.temperature)
            kl = pm.kl_per_token(old["logp"], ref_logp, cfg.options.kl_estimator) * mask
            scores = self._normalised(b.scores) if cfg.options.reward_norm else b.scores
            rewards = pm.token_rewards(scores, kl, mask, self.kl.coef)
            if cfg.options.whiten_rewards:
                rewards = pm.masked_whiten(rewards, mask, shift_mean=False)
            adv, returns = pm.gae(rewards, old["values"], mask, cfg.options.gamma, cfg.options.lam)
            adv = pm.masked_whiten(adv, mask)
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "value_clipfrac",
                                                         "approx_kl")}
        B, mb = len(b.texts), cfg.options.train.batch_size
        warmup = it < min(cfg.options.critic_warmup, cfg.options.iterations - 1)  # the critic alone; the policy always trains after
        gen = torch.Generator().manual_seed(_rng_seed(cfg.options.train.seed, it, 3))
        for _ in range(cfg.options.ppo_epochs):
            order = torch.randperm(B, generator=gen).tolist()
            for idx in (order[i : i + mb] for i in range(0, B, mb)):
                i = torch.tensor(idx, device=mask.device)
                with self.accelerator.accumulate(self.model):  # steps every `grad_accum` minibatches
                    new = self.model(b.input_ids[i], b.attention_mask[i], T, cfg.options.rollout.temperature,
                                     value_trunk_grad=not warmup)
                    pl, ps = pm.policy_loss(new["logp"], old["logp"][i], adv[i], mask[i], cfg.options.cliprange)
                    vl, vs = pm.value_loss(new["values"], old["values"][i], returns[i], mask[i], cfg.options.cliprange_value)
                    if warmup:  # no step for the trunk, weight decay included; set before backward, inside
                        self.optimizer.param_groups[0]["lr"] = 0.0  # which DeepSpeed steps (the scheduler resets it)
                    # warm-up: the policy's gradient is zero (kept in the graph: DDP expects every parameter)
                    self.accelerator.backward((0.0 if warmup else 1.0) * pl + cfg.options.vf_coef * vl)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.options.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in (("policy_loss", pl), ("value_loss", vl), *ps.items(), *vs.items()):
                    stats[k].append(float(v.detach()))
        seq_kl = self.accelerator.reduce(kl.sum(1).mean(), "mean").item()  # one KL for every process
        coef = self.kl.coef
        self.kl.update(seq_kl, B)
        lengths = mask.sum(1).float()
        row = {
            "iteration": it + 1, "step": it + 1, "score": b.scores.mean().item(), "score_std": b.scores.std().item() if B > 1 else 0.0,
            **{f"reward_{k}": sum(v) / len(v) for k, v in b.terms.items()},
            "kl": seq_kl, "kl_coef": coef, "entropy": pm.masked_mean(old["entropy"], mask).item(),
            "response_length": lengths.mean().item(), "ended_share": sum(b.ended) / B,
            "explained_variance": pm.explained_variance(old["values"], returns, mask),
            "returns_mean": pm.masked_mean(returns, mask).item(), "returns_std": pm.masked_var(returns, mask).sqrt().item(),
            "values_mean": pm.masked_mean(old["values"], mask).item(), "critic_warmup": float(warmup),
            "advantage_mean_raw": pm.masked_mean(adv, mask).item(),
            "lr": self.scheduler.get_last_lr()[0], "rollout_s": t_rollout, "iteration_s": time.time() - t0,
            **{k: sum(v) / len(v) for k, v in stats.items() if v},
        }
        self.history.append(row)
        self.accelerator.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=it + 1)
        if (it + 1) % cfg.options.sample_every == 0 or it == 0:
            from alignment.data import prompt_texts

            qs = prompt_texts([{"prompt": c} for c in b.chats])
            self.samples += [{"iteration": it + 1, "prompt": q, "response": t, "score": s, "ended": e}
                             for q, t, s, e in zip(qs, b.texts, b.scores.tolist(), b.ended, strict=True)][:4]
        self.iteration += 1
        return row

    def train(self, checkpoint_dir: Path | None = None, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Run the remaining iterations (after a resume, from where the checkpoint left off); `stop_after`
        ends early after that many iterations in total (used to test resuming)."""
        cfg = self.config
        end = min(cfg.options.iterations, stop_after) if stop_after else cfg.options.iterations
        while self.iteration < end:
            row = self.step()
            if self.progress:
                self.progress(self.iteration / cfg.options.iterations, {"score": row["score"], "kl": row["kl"]})
            if checkpoint_dir is not None and (self.iteration % cfg.options.train.checkpoint_every == 0 or self.iteration == end):
                self.save_checkpoint(checkpoint_dir)
        return self.history

    def end(self) -> None:
        """Close the trackers (a no-op without them)."""
        self.accelerator.end_training()

    # -- checkpoints -----------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Trainable weights by name (`policy.*`, `value_head.*`), full tensors on the CPU: gathered from
        every process (ZeRO-3 shards included), so every process must call it; under ZeRO-3 only the main
        process gets them (the others get nothing)."""
        state = self.accelerator.get_state_dict(self.model) or {}
        trainable = {n for n, p in self.accelerator.unwrap_model(self.model).named_parameters() if p.requires_grad}
        return {n: v.detach().cpu().contiguous() for n, v in state.items() if n in trainable}

    def value_head_state(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("value_head."): v for k, v in self.trainable_state().items() if k.startswith("value_head.")}

    def save_checkpoint(self, root: Path) -> Path:
        """``root/iter-N``: accelerate's state (every process writes its part) and state.json, written to a
        temp name and renamed by the main process; the newest `train.keep_checkpoints` are kept."""
        import shutil

        final = root / f"iter-{self.iteration:05d}"
        tmp = root / f".tmp-{final.name}"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps({"iteration": self.iteration, "kl_coef": self.kl.coef,
                                                      "moments": dataclasses.asdict(self.moments),
                                                      "history": self.history, "samples": self.samples}))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in sorted(root.glob("iter-*"))[: -self.config.options.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def resume(self, root: Path) -> Path | None:
        """Load the newest usable checkpoint under `root` (the main process picks it), if any."""
        from accelerate.utils import broadcast_object_list

        box = [str(latest_checkpoint(root)) if self.accelerator.is_main_process and latest_checkpoint(root) else None]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(box, from_process=0)
        if box[0] is None:
            return None
        self.load_checkpoint(Path(box[0]))
        return Path(box[0])

    def load_checkpoint(self, path: Path) -> None:
        self.accelerator.load_state(str(path))
        state = json.loads((path / STATE_FILE).read_text())
        self.iteration, self.kl.coef = state["iteration"], state["kl_coef"]
        self.moments = pm.RunningMoments(**state.get("moments", {}))
        self.history, self.samples = state["history"], state["samples"]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat scalar hyper-parameters (what trackers accept)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, int | float | str | bool) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def _deepspeed_settings(accelerator, config: PPOStageConfig) -> None:
    """DeepSpeed cannot infer the micro-batch without a dataloader, and clips gradients itself."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = config.options.train.batch_size
        ds["gradient_accumulation_steps"] = config.options.train.grad_accum
        ds["train_batch_size"] = config.options.train.batch_size * config.options.train.grad_accum * accelerator.num_processes
        ds["gradient_clipping"] = config.options.max_grad_norm


def _prepare_reference(ref_model, accelerator):
    """The frozen reference of a full fine-tune: DeepSpeed inference under ZeRO-3 (TRL's helper), else
    on the device in eval mode."""
    if ref_model is None:
        return None
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(ref_model, accelerator)
    return ref_model.to(accelerator.device).eval()


def latest_checkpoint(root: Path) -> Path | None:
    """The newest ``iter-N`` whose state loads; damaged newer ones (a kill mid-save) are set aside."""
    from alignment.training import usable_files

    for path in sorted(root.glob("iter-*"), reverse=True):
        try:
            json.loads((path / STATE_FILE).read_text())
            if usable_files(path):
                return path
        except (OSError, ValueError):
            pass
        path.rename(path.with_name(f"damaged-{path.name}"))
    return None


def policy_weights(model):
    """(name, tensor) pairs of the full policy as vLLM names them, LoRA merged in (then unmerged)."""
    if hasattr(model, "merge_adapter"):
        model.merge_adapter()
        try:
            for name, p in model.named_parameters():
                name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                if model.prefix in name or "original_module" in name:
                    continue
                yield name.replace("modules_to_save.default.", ""), p.data
        finally:
            model.unmerge_adapter()
    else:
        for name, p in model.named_parameters():
            yield name, p.data
