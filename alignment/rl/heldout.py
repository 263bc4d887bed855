"""The before/after report of every RL stage (PPO, GRPO, RLOO), measured on held-out prompts.

- **Reward before and after**: responses of the start policy and of the trained policy (the stage's
  `generation` settings, greedy by default) scored by the same reward function; means with 95%
  bootstrap intervals, and the paired difference with its interval.
- **KL to the reference**: responses *sampled* from the trained policy at the rollout temperature, and the
  per-response sums of the k1 and k3 estimators of KL(policy || reference), with intervals (an estimate
  of the KL is only unbiased on samples from the policy).
- **Length drift**: mean response length after / before, in tokens.
Writes ``heldout.jsonl`` (per prompt: before, after, their rewards and lengths).
"""

import json
from pathlib import Path
from typing import Any

import torch

from alignment.config import GenerationSpec
from alignment.data import prompt_texts
from alignment.generation.base import Chat, Completion
from alignment.rl import ppo_math as pm
from alignment.stats import bootstrap_ci

BOOTSTRAP = 1000


def respond(model, tok, chats: list[Chat], spec: GenerationSpec) -> list[Completion]:
    from alignment.generation.hf import HFEngine

    return HFEngine(model, tok, static_cache="off").generate(chats, spec)


def measure(model, tok, chats: list[Chat], reward_fn, spec: GenerationSpec) -> dict[str, Any]:
    """Responses of `model` to `chats` and their rewards."""
    completions = respond(model, tok, chats, spec)
    texts = [c.text for c in completions]
    scores, _ = reward_fn(chats, texts)
    return {"texts": texts, "scores": scores, "lengths": [c.n_tokens for c in completions]}


def kl_on_samples(model, tok, chats: list[Chat], rollout: GenerationSpec, ref_model=None,
                  batch_size: int = 8) -> dict[str, list[float]]:
    """Per-response KL(policy || reference) estimates (k1, k3 summed over tokens) on policy samples."""
    from alignment.rl.ppo import build_batch, forward, reference_logp

    completions = respond(model, tok, chats, rollout)
    device = next(model.parameters()).device
    out: dict[str, list[float]] = {"k1": [], "k3": []}
    model.eval()
    for s in range(0, len(chats), batch_size):
        part = completions[s : s + batch_size]
        ids, attn, _, mask = build_batch(tok, chats[s : s + batch_size],
                                         [c.token_ids or [tok.eos_token_id] for c in part], device)
        T = mask.shape[1]
        with torch.no_grad():
            logp = forward(model, None, ids, attn, T, rollout.temperature)["logp"]
            ref = reference_logp(model, ref_model, ids, attn, T, rollout.temperature)
        for kind in ("k1", "k3"):
            out[kind] += (pm.kl_per_token(logp, ref, kind) * mask).sum(1).tolist()
    return out


def _ci(prefix: str, values: list[float]) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(values, BOOTSTRAP)
    return {f"{prefix}_mean": mean, f"{prefix}_ci_low": lo, f"{prefix}_ci_high": hi}


def report(out: Path, chats: list[Chat], before: dict[str, Any], after: dict[str, Any],
           kl: dict[str, list[float]]) -> dict[str, Any]:
    """Metrics for the manifest (prefixed ``heldout_``) and ``heldout.jsonl``."""
    diff = [a - b for a, b in zip(after["scores"], before["scores"], strict=True)]
    len_before = sum(before["lengths"]) / len(before["lengths"])
    len_after = sum(after["lengths"]) / len(after["lengths"])
    metrics = {"heldout_prompts": len(chats), **_ci("heldout_reward_before", before["scores"]),
               **_ci("heldout_reward_after", after["scores"]), **_ci("heldout_reward_gain", diff),
               **_ci("heldout_kl_k1", kl["k1"]), **_ci("heldout_kl_k3", kl["k3"]),
               "heldout_length_before": len_before, "heldout_length_after": len_after,
               "heldout_length_drift_ratio": len_after / max(len_before, 1e-9)}
    with open(out / "heldout.jsonl", "w", encoding="utf-8") as f:
        for q, i in zip(prompt_texts([{"prompt": c} for c in chats]), range(len(chats)), strict=True):
            f.write(json.dumps({"prompt": q, "before": before["texts"][i], "after": after["texts"][i],
                                "reward_before": before["scores"][i], "reward_after": after["scores"][i],
                                "tokens_before": before["lengths"][i], "tokens_after": after["lengths"][i]},
                               ensure_ascii=False) + "\n")
    return metrics


def write_markdown(out: Path, algorithm: str, m: dict[str, Any]) -> None:
    """``report.md``: the before/after numbers and the held-out responses side by side."""
    def ci(k: str) -> str:
        return f"{m[k + '_mean']:.3f} (95% CI {m[k + '_ci_low']:.3f} to {m[k + '_ci_high']:.3f})"

    lines = [f"# {algorithm.upper()}: held-out before / after", "",
             f"- reward before: {ci('heldout_reward_before')}", f"- reward after: {ci('heldout_reward_after')}",
             f"- paired gain: {ci('heldout_reward_gain')}",
             f"- KL(policy ‖ reference) per response, on policy samples: k1 {ci('heldout_kl_k1')}, "
             f"k3 {ci('heldout_kl_k3')}",
             f"- length: {m['heldout_length_before']:.1f} → {m['heldout_length_after']:.1f} tokens "
             f"(× {m['heldout_length_drift_ratio']:.2f})", "",
             "| prompt | before | reward | after | reward |", "|---|---|---|---|---|"]
    cell = lambda t: str(t).replace("|", "\\|").replace("\n", " ")[:300]  # noqa: E731
    for line in (out / "heldout.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        lines.append(f"| {cell(r['prompt'])} | {cell(r['before'])} | {r['reward_before']:.3f} | {cell(r['after'])} "
                     f"| {r['reward_after']:.3f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
