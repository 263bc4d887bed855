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
   a table of sample rollouts every `sample_every` iterations; a checkpoint every `checkpoint_every`.

Layout: prompts are left-padded to a common length P and responses right-padded to T, so response
token t sits at position P + t and is predicted by the logits at P + t - 1.

Resuming: every random draw of iteration i is seeded from (seed, i), and a checkpoint holds the trainable
weights (adapter + value head, safetensors), the optimizer and scheduler states, the KL coefficient and
the metrics so far; a run that resumes from iteration k's checkpoint therefore computes what an
uninterrupted run computes (tested). The policy runs in eval mode throughout (no dropout), so the
probability ratio is exactly 1 at the first minibatch of each iteration.
"""

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignment.config import PPOStageConfig
from alignment.generation.base import Chat
from alignment.rl import ppo_math as pm

STATE_FILE = "state.json"


class ValueHead(nn.Module):
    """V(s) from the policy's last hidden state (shared trunk, as in Ziegler et al. and InstructGPT)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


@dataclass
class Batch:
    """A scored rollout batch, as tensors in the P/T layout (see the module docstring)."""

    chats: list[Chat]
    texts: list[str]
    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    response: torch.Tensor  # [B, T] response token ids (pad after the end)
    mask: torch.Tensor  # [B, T] 1 on response tokens
    scores: torch.Tensor  # [B] total reward (after the EOS penalty)
    terms: dict[str, list[float]] = field(default_factory=dict)
    ended: list[bool] = field(default_factory=list)


def build_batch(tok, chats: list[Chat], responses: list[list[int]], device) -> tuple[torch.Tensor, ...]:
    """Token tensors in the P/T layout from chats and response token ids."""
    from alignment.generation.base import prompt_ids

    queries = [prompt_ids(tok, c) for c in chats]
    P, T = max(map(len, queries)), max(1, max(map(len, responses)))
    pad = tok.pad_token_id
    ids, attn, resp, mask = [], [], [], []
    for q, r in zip(queries, responses, strict=True):
        ids.append([pad] * (P - len(q)) + q + r + [pad] * (T - len(r)))
        attn.append([0] * (P - len(q)) + [1] * (len(q) + len(r)) + [0] * (T - len(r)))
        resp.append(r + [pad] * (T - len(r)))
        mask.append([1] * len(r) + [0] * (T - len(r)))
    t = lambda x: torch.tensor(x, device=device)  # noqa: E731
    return t(ids), t(attn), t(resp), t(mask)


def forward(model, value_head: ValueHead | None, input_ids, attention_mask, T: int, temperature: float,
            with_entropy: bool = False) -> dict[str, torch.Tensor]:
    """Log-probs ``[B, T]`` of the response tokens (logits / temperature, as sampled), values ``[B, T]``
    when a value head is given, and per-token entropy on request."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=value_head is not None, use_cache=False)
    P = input_ids.shape[1] - T
    logits = out.logits[:, P - 1 : P - 1 + T].float() / max(temperature, 1e-7)
    res = {"logp": pm.logprobs_of(logits, input_ids[:, P:])}
    if value_head is not None:
        res["values"] = value_head(out.hidden_states[-1][:, P - 1 : P - 1 + T])
    if with_entropy:
        res["entropy"] = pm.entropy_from_logits(logits)
    return res


def reference_logp(model, ref_model, input_ids, attention_mask, T: int, temperature: float) -> torch.Tensor:
    """Response log-probs under the reference: `ref_model` (full fine-tuning) or, for a LoRA policy, the
    same weights with the adapter disabled."""
    if ref_model is not None:
        return forward(ref_model, None, input_ids, attention_mask, T, temperature)["logp"]
    with model.disable_adapter():
        return forward(model, None, input_ids, attention_mask, T, temperature)["logp"]


def _rng_seed(seed: int, iteration: int, what: int) -> int:
    return (seed * 1_000_003 + iteration * 7919 + what) % (2**31)


class PPOLoop:
    """The PPO loop over a policy (a PEFT model or a full model), its value head and a reward function."""

    def __init__(self, config: PPOStageConfig, policy, tokenizer, reward_fn, prompts: list[Chat],
                 ref_model=None, engine=None, progress: Callable[[float, dict], None] | None = None):
        from accelerate import Accelerator
        from transformers import get_scheduler

        self.config, self.tok, self.reward_fn, self.prompts = config, tokenizer, reward_fn, prompts
        self.is_peft = hasattr(policy, "disable_adapter")
        if not self.is_peft and ref_model is None:
            raise ValueError("ppo: full fine-tuning needs a frozen reference model (ref_model)")
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        torch.manual_seed(config.train.seed)
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = ValueHead(hidden).to(next(policy.parameters()).device)
        params = [p for p in policy.parameters() if p.requires_grad] + list(self.value_head.parameters())
        opt = torch.optim.AdamW(params, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
        updates = config.iterations * config.ppo_epochs * math.ceil(
            config.rollout_batch / (config.train.batch_size * config.train.grad_accum))
        sched = get_scheduler(config.train.lr_scheduler, opt, num_warmup_steps=round(config.train.warmup_ratio * updates),
                              num_training_steps=updates)
        self.policy, self.value_head, self.optimizer, self.scheduler = self.accelerator.prepare(
            policy, self.value_head, opt, sched)
        self.ref_model = ref_model.to(self.accelerator.device).eval() if ref_model is not None else None
        self.engine, self.progress = engine, progress
        self.kl = pm.KLController(config.kl_coef, config.kl_target, config.kl_horizon)
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []

    # -- rollout ---------------------------------------------------------------------------------
    def _prompt_batch(self, iteration: int) -> list[Chat]:
        """Prompts of `iteration`: consecutive slices of seeded shuffles of the prompt set (one per pass)."""
        n, k = len(self.prompts), self.config.rollout_batch
        out: list[Chat] = []
        start = iteration * k
        while len(out) < k:
            epoch, offset = divmod(start + len(out), n)
            order = list(range(n))
            random.Random(_rng_seed(self.config.train.seed, epoch, 1)).shuffle(order)
            out += [self.prompts[i] for i in order[offset : offset + k - len(out)]]
        return out

    def _generate(self, chats: list[Chat], seed: int):
        spec = self.config.rollout.model_copy(update={"seed": seed, "batch_size": max(self.config.rollout.batch_size,
                                                                                      len(chats))})
        if self.engine is not None:  # vLLM: load the current weights first
            self.engine.load_weights(policy_weights(self.accelerator.unwrap_model(self.policy)))
            return self.engine.generate(chats, spec)
        from alignment.generation.hf import HFEngine

        model = self.accelerator.unwrap_model(self.policy)
        return HFEngine(model, self.tok, static_cache="off").generate(chats, spec)

    def rollout(self, iteration: int) -> Batch:
        acc = self.accelerator  # several processes: each takes its share of the prompts
        chats = self._prompt_batch(iteration)[acc.process_index :: acc.num_processes]
        completions = self._generate(chats, _rng_seed(self.config.train.seed, iteration, 2))
        eos = self.tok.eos_token_id
        ended = [bool(c.token_ids) and c.token_ids[-1] == eos for c in completions]
        responses = [c.token_ids or [eos] for c in completions]
        ids, attn, resp, mask = build_batch(self.tok, chats, responses, self.accelerator.device)
        texts = [c.text for c in completions]
        total, terms = self.reward_fn(chats, texts)
        scores = torch.tensor(total, dtype=torch.float32, device=ids.device)
        if self.config.missing_eos_penalty is not None:
            scores = scores - self.config.missing_eos_penalty * (~torch.tensor(ended, device=ids.device)).float()
        return Batch(chats, texts, ids, attn, resp, mask, scores, terms, ended)

    # -- one iteration ---------------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        cfg, it = self.config, self.iteration
        torch.manual_seed(_rng_seed(cfg.train.seed, it, 0))
        t0 = time.time()
        b = self.rollout(it)
        t_rollout = time.time() - t0
        T, mask = b.mask.shape[1], b.mask
        self.policy.eval()
        with torch.no_grad():
            old = forward(self.policy, self.value_head, b.input_ids, b.attention_mask, T, cfg.rollout.temperature,
                          with_entropy=True)
            ref_logp = reference_logp(self.accelerator.unwrap_model(self.policy), self.ref_model, b.input_ids,
                                      b.attention_mask, T, cfg.rollout.temperature)
            kl = pm.kl_per_token(old["logp"], ref_logp, cfg.kl_estimator) * mask
            rewards = pm.token_rewards(b.scores, kl, mask, self.kl.coef)
            if cfg.whiten_rewards:
                rewards = pm.masked_whiten(rewards, mask, shift_mean=False)
            adv, returns = pm.gae(rewards, old["values"], mask, cfg.gamma, cfg.lam)
            adv = pm.masked_whiten(adv, mask)
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "value_clipfrac",
                                                         "approx_kl")}
        B, mb = len(b.texts), cfg.train.batch_size
        gen = torch.Generator().manual_seed(_rng_seed(cfg.train.seed, it, 3))
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=gen).tolist()
            chunks = [order[i : i + mb] for i in range(0, B, mb)]
            for g in range(0, len(chunks), cfg.train.grad_accum):
                group = chunks[g : g + cfg.train.grad_accum]
                for idx in group:
                    i = torch.tensor(idx, device=mask.device)
                    new = forward(self.policy, self.value_head, b.input_ids[i], b.attention_mask[i], T,
                                  cfg.rollout.temperature)
                    pl, ps = pm.policy_loss(new["logp"], old["logp"][i], adv[i], mask[i], cfg.cliprange)
                    vl, vs = pm.value_loss(new["values"], old["values"][i], returns[i], mask[i], cfg.cliprange_value)
                    loss = (pl + cfg.vf_coef * vl) / len(group)
                    self.accelerator.backward(loss)
                    for k, v in (("policy_loss", pl), ("value_loss", vl), *ps.items(), *vs.items()):
                        stats[k].append(float(v.detach()))
                self.accelerator.clip_grad_norm_(
                    [p for p in self.policy.parameters() if p.requires_grad] + list(self.value_head.parameters()),
                    cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        seq_kl = (kl.sum(1)).mean().item()
        coef = self.kl.coef
        self.kl.update(seq_kl, B)
        lengths = mask.sum(1).float()
        row = {
            "iteration": it + 1, "step": it + 1, "score": b.scores.mean().item(), "score_std": b.scores.std().item() if B > 1 else 0.0,
            **{f"reward_{k}": sum(v) / len(v) for k, v in b.terms.items()},
            "kl": seq_kl, "kl_coef": coef, "entropy": pm.masked_mean(old["entropy"], mask).item(),
            "response_length": lengths.mean().item(), "ended_share": sum(b.ended) / B,
            "explained_variance": pm.explained_variance(old["values"], returns, mask),
            "advantage_mean_raw": pm.masked_mean(adv, mask).item(),
            "lr": self.scheduler.get_last_lr()[0], "rollout_s": t_rollout, "iteration_s": time.time() - t0,
            **{k: sum(v) / len(v) for k, v in stats.items() if v},
        }
        self.history.append(row)
        if (it + 1) % cfg.sample_every == 0 or it == 0:
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
        end = min(cfg.iterations, stop_after) if stop_after else cfg.iterations
        while self.iteration < end:
            row = self.step()
            if self.progress:
                self.progress(self.iteration / cfg.iterations, {"score": row["score"], "kl": row["kl"]})
            if checkpoint_dir is not None and (self.iteration % cfg.checkpoint_every == 0 or self.iteration == end):
                if self.accelerator.is_main_process:
                    self.save_checkpoint(checkpoint_dir)
                self.accelerator.wait_for_everyone()
        return self.history

    # -- checkpoints -----------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        policy = self.accelerator.unwrap_model(self.policy)
        out = {f"policy.{n}": p.detach().cpu().contiguous() for n, p in policy.named_parameters() if p.requires_grad}
        vh = self.accelerator.unwrap_model(self.value_head)
        out.update({f"value_head.{n}": p.detach().cpu().contiguous() for n, p in vh.named_parameters()})
        return out

    def value_head_state(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("value_head."): v for k, v in self.trainable_state().items() if k.startswith("value_head.")}

    def save_checkpoint(self, root: Path) -> Path:
        """``root/iter-N``: weights (safetensors), optimizer/scheduler (torch), state.json; written to a
        temp name and renamed, and only the newest two are kept."""
        import shutil

        from safetensors.torch import save_file

        root.mkdir(parents=True, exist_ok=True)
        final = root / f"iter-{self.iteration:05d}"
        tmp = root / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(self.trainable_state(), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   tmp / "optimizer.pt")
        (tmp / STATE_FILE).write_text(json.dumps({"iteration": self.iteration, "kl_coef": self.kl.coef,
                                                  "history": self.history, "samples": self.samples}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root.glob("iter-*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        weights = load_file(str(path / "trainable.safetensors"))
        policy = self.accelerator.unwrap_model(self.policy)
        vh = self.accelerator.unwrap_model(self.value_head)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if p.requires_grad:
                    p.copy_(weights[f"policy.{name}"])
            for name, p in vh.named_parameters():
                p.copy_(weights[f"value_head.{name}"])
        opt = torch.load(path / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        state = json.loads((path / STATE_FILE).read_text())
        self.iteration, self.kl.coef = state["iteration"], state["kl_coef"]
        self.history, self.samples = state["history"], state["samples"]


def latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("iter-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


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
