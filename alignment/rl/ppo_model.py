"""The model side of our PPO (``alignment.rl.ppo`` is the loop): the value head, the policy and its value
head as one module, a rollout batch as tensors, and the forward passes that give log-probs, values and
entropy of the response tokens, under the policy or the reference.

Layout: prompts are left-padded to a common length P and responses right-padded to T, so response
token t sits at position P + t and is predicted by the logits at P + t - 1.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from alignment.generation.base import Chat
from alignment.rl import ppo_math as pm


class ValueHead(nn.Module):
    """V(s) from the policy's last hidden state (shared trunk, as in Ziegler et al. and InstructGPT).

    Starts at zero (weights and bias): a randomly initialised head predicts noise of the hidden states'
    scale, several times the returns' (explained variance -1 to -9 on the default model before this), and
    the clipped value loss then needs many iterations only to undo it."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
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
            with_entropy: bool = False, value_trunk_grad: bool = True) -> dict[str, torch.Tensor]:
    """Log-probs ``[B, T]`` of the response tokens (logits / temperature, as sampled), values ``[B, T]``
    when a value head is given, and per-token entropy on request. ``value_trunk_grad=False``: the value
    loss trains the head alone (the critic's warm-up leaves the policy as it is)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=value_head is not None, use_cache=False)
    P = input_ids.shape[1] - T
    logits = out.logits[:, P - 1 : P - 1 + T].float() / max(temperature, 1e-7)
    res = {"logp": pm.logprobs_of(logits, input_ids[:, P:])}
    if value_head is not None:
        hidden = out.hidden_states[-1][:, P - 1 : P - 1 + T]
        res["values"] = value_head(hidden if value_trunk_grad else hidden.detach())
    if with_entropy:
        res["entropy"] = pm.entropy_from_logits(logits)
    return res


class PolicyAndValue(nn.Module):
    """The policy and its value head as one module: what accelerate prepares, DDP synchronises and
    DeepSpeed shards and checkpoints."""

    def __init__(self, policy, value_head: ValueHead):
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, input_ids, attention_mask, T: int, temperature: float, with_entropy: bool = False,
                value_trunk_grad: bool = True):
        return forward(self.policy, self.value_head, input_ids, attention_mask, T, temperature, with_entropy,
                       value_trunk_grad)

    # what TRL's generation helper asks of a model (it switches checkpointing off while generating)
    @property
    def is_gradient_checkpointing(self) -> bool:
        return getattr(self.policy, "is_gradient_checkpointing", False)

    def gradient_checkpointing_disable(self) -> None:
        self.policy.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.policy.gradient_checkpointing_enable(**kwargs)


def reference_logp(model, ref_model, input_ids, attention_mask, T: int, temperature: float) -> torch.Tensor:
    """Response log-probs under the reference: `ref_model` (full fine-tuning) or, for a LoRA policy, the
    same weights with the adapter disabled."""
    if ref_model is not None:
        return forward(ref_model, None, input_ids, attention_mask, T, temperature)["logp"]
    with model.disable_adapter():
        return forward(model, None, input_ids, attention_mask, T, temperature)["logp"]
