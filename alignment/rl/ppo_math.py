"""PPO's math as pure functions on tensors: no model, no optimizer, no state (except the KL controller).

Shapes: ``B`` rollouts in a batch, ``T`` response tokens (right-padded). ``mask`` is ``[B, T]`` with 1 on
real response tokens and 0 on padding; every function ignores padded positions. Per-token quantities are
aligned with the response tokens: position ``t`` holds the log-probability of response token ``t``, the
value of the state it was generated in, and the reward received for it.

References: Schulman et al. 2017 (clipped surrogate), Schulman et al. 2016 (GAE), Ziegler et al. 2019
(per-token KL penalty, adaptive KL controller), Schulman 2020 "Approximating KL divergence" (k1/k2/k3).
Written here because TRL 1.16 has no PPO; unit tests compare each function with hand-computed values.
"""

from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (all dims, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of `x` (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """`x` scaled to unit variance over the masked entries (and centred unless `shift_mean` is False);
    padded positions are returned as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs of the sampled tokens ``[B, T]``.

    k1 = log p - log q (unbiased, can be negative); k2 = (log p - log q)^2 / 2 (biased, >= 0);
    k3 = (q/p - 1) - log(q/p) (unbiased, >= 0, low variance).
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl estimator {kind!r}: expected 'k1', 'k2' or 'k3'")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards ``[B, T]``: ``-kl_coef * kl`` on every response token, plus the sequence score
    ``scores [B]`` on the last real token of each row (Ziegler et al.)."""
    rewards = -kl_coef * kl * mask.to(kl.dtype)
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` = 0 after the last real token (the episode ends),
    ``A_t = delta_t + gamma * lam * A_{t+1}``; returns ``(advantages, returns = A + V)``, both ``[B, T]``
    and 0 on padding.
    """
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + values) * m


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate ``-min(ratio * A, clip(ratio, 1-clip, 1+clip) * A)``, token mean.

    Returns the loss and ``clipfrac`` (share of tokens where the clipped term was taken) and
    ``approx_kl`` (k3 estimate of KL(old || new), for monitoring)."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return loss, {"clipfrac": clipfrac, "approx_kl": approx_kl}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * max((V - R)^2, (clip(V, V_old ± clip) - R)^2)``, token mean."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err).to(values.dtype), mask)
    return loss, {"value_clipfrac": clipfrac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: ``[..., V] -> [...]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token in `tokens` ``[B, T]`` under `logits` ``[B, T, V]`` (already aligned:
    ``logits[:, t]`` is the distribution that `tokens[:, t]` was drawn from)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over masked tokens: 1 is a perfect critic, 0 no better than a constant."""
    var_r = masked_var(returns, mask)
    if var_r.item() == 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / var_r)


@dataclass
class KLController:
    """The KL coefficient: fixed (``target`` None) or adaptive (Ziegler et al. 2019): after each batch,
    ``coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon``."""

    coef: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = max(-0.2, min(0.2, current_kl / self.target - 1))
            self.coef *= 1 + error * n_steps / self.horizon
        return self.coef


@dataclass
class RunningMoments:
    """Mean and standard deviation of every score seen so far (Chan et al.'s parallel update of Welford's
    algorithm), to normalise rewards across iterations: the value head then fits targets of a fixed scale
    whatever the reward model's, as OpenRLHF's `normalize_reward` and TRL's old PPO `whiten` of scores did."""

    mean: float = 0.0
    var: float = 1.0
    count: int = 0

    def update(self, xs: torch.Tensor) -> None:
        n = xs.numel()
        if n:
            self.update_from(n, xs.float().mean().item(), xs.float().var(unbiased=False).item() if n > 1 else 0.0)

    def update_from(self, n: int, b_mean: float, b_var: float) -> None:
        """Merge a batch of `n` values with mean `b_mean` and (population) variance `b_var`."""
        if n <= 0:
            return
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    @property
    def std(self) -> float:
        return max(self.var, 0.0) ** 0.5

    def normalise(self, xs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """`xs` centred and scaled by the moments (update first, so one batch alone is also scaled)."""
        if self.count < 2 or self.std < eps:
            return xs - self.mean
        return (xs - self.mean) / self.std
