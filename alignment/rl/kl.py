"""KL(policy ‖ reference) estimated per response on samples of the policy, with the k1 and k3 estimators
(an estimate of the KL is unbiased only on samples from the policy). The evaluate stage reports it; the
per-token estimators are ``ppo_math.kl_per_token``."""

import torch

from alignment.config import GenerationSpec
from alignment.generation.base import Chat
from alignment.rl import ppo_math as pm


def kl_on_samples(model, tok, chats: list[Chat], sampling: GenerationSpec, ref_model=None,
                  batch_size: int = 8) -> dict[str, list[float]]:
    """Per-response KL(policy || reference) estimates (k1, k3 summed over tokens) on policy samples.
    `ref_model` None means a LoRA policy whose reference is the adapter disabled."""
    from alignment.generation.hf import HFEngine
    from alignment.rl.ppo_model import build_batch, forward, reference_logp

    completions = HFEngine(model, tok, static_cache="off").generate(chats, sampling)
    device = next(model.parameters()).device
    out: dict[str, list[float]] = {"k1": [], "k3": []}
    model.eval()
    for s in range(0, len(chats), batch_size):
        part = completions[s : s + batch_size]
        ids, attn, _, mask = build_batch(tok, chats[s : s + batch_size],
                                         [c.token_ids or [tok.eos_token_id] for c in part], device)
        T = mask.shape[1]
        with torch.no_grad():
            logp = forward(model, None, ids, attn, T, sampling.temperature)["logp"]
            ref = reference_logp(model, ref_model, ids, attn, T, sampling.temperature)
        for kind in ("k1", "k3"):
            out[kind] += (pm.kl_per_token(logp, ref, kind) * mask).sum(1).tolist()
    return out
