"""Scalar rewards: a reward model (a sequence classifier with one output, what TRL's ``RewardTrainer``
trains) applied to the chat-formatted prompt + response, and the weighted mix of reward model, rule and
LLM judge that the RL stages (PPO, GRPO, RLOO) optimise."""

import re
from dataclasses import dataclass, field

from alignment.config import ModelSpec, RewardSources, RuleReward
from alignment.generation.base import Chat

JUDGE_TEMPLATE = "reward_judge.jinja"  # option (A) is "Yes": its probability is the judge's reward term


def chat_text(tok, chat: Chat | str, response: str | list[dict[str, str]]) -> str:
    """The text a reward model scores: the chat template over prompt + assistant response."""
    if isinstance(chat, str):
        return chat + (response if isinstance(response, str) else response[-1]["content"])
    turns = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
    return tok.apply_chat_template(list(chat) + turns, tokenize=False)


class RewardModel:
    """A loaded reward model; ``score(chats, responses)`` → one float per response."""

    def __init__(self, model, tokenizer, max_length: int = 1024):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    @classmethod
    def load(cls, spec: ModelSpec, where: str = "reward.model") -> "RewardModel":
        import torch
        from transformers import AutoModelForSequenceClassification

        from alignment.models import load_tokenizer, resolve_model_path, torch_dtype

        tok = load_tokenizer(spec)
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(spec), dtype=torch_dtype(spec), use_safetensors=True,
            trust_remote_code=spec.trust_remote_code)
        if model.config.num_labels != 1:
            raise ValueError(f"{where}: {spec.name!r} has {model.config.num_labels} outputs; a reward model has "
                             "exactly one (num_labels=1): use the reward stage's artifact")
        model.config.pad_token_id = tok.pad_token_id
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        return cls(model, tok)

    def score_texts(self, texts: list[str], batch_size: int = 16) -> list[float]:
        import torch

        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        out: list[float] = []
        side, trunc = tok.padding_side, tok.truncation_side
        tok.padding_side = "right"
        tok.truncation_side = "left"  # over-long texts keep their end: the response being scored
        try:
            for i in range(0, len(texts), batch_size):
                batch = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=self.max_length, add_special_tokens=False).to(device)
                with torch.no_grad():
                    out += model(**batch).logits[:, 0].float().tolist()
        finally:
            tok.padding_side, tok.truncation_side = side, trunc
        return out

    def score(self, chats: list[Chat], responses: list[str], batch_size: int = 16) -> list[float]:
        return self.score_texts([chat_text(self.tokenizer, c, r) for c, r in zip(chats, responses, strict=True)],
                                batch_size)


def rule_score(rule: RuleReward, text: str) -> float:
    hits = len(re.findall(re.escape(rule.contains), text, flags=re.IGNORECASE))
    return float(hits > 0) if rule.mode == "binary" else float(min(hits, 5))


@dataclass
class RewardFunction:
    """The total reward: ``model_weight * RM + rule.weight * rule + judge_weight * P(judge says Yes)``.
    Loads the reward model and the judge once; ``__call__`` returns totals and each term per response."""

    sources: RewardSources
    reward_model: RewardModel | None = None
    judge: object | None = None
    _engine: object | None = field(default=None, repr=False)

    @classmethod
    def load(cls, sources: RewardSources) -> "RewardFunction":
        fn = cls(sources)
        if sources.model is not None:
            fn.reward_model = RewardModel.load(sources.model)
        if sources.judge is not None:
            from alignment.generation import load_engine
            from alignment.judges import MultipleChoiceJudge

            fn._engine = load_engine(sources.judge.model, sources.judge.engine)
            fn.judge = MultipleChoiceJudge(fn._engine, JUDGE_TEMPLATE)
        return fn

    def __call__(self, chats: list[Chat], responses: list[str]) -> tuple[list[float], dict[str, list[float]]]:
        s = self.sources
        terms: dict[str, list[float]] = {}
        total = [0.0] * len(responses)
        if self.reward_model is not None:
            terms["reward_model"] = self.reward_model.score(chats, responses)
            total = [t + s.model_weight * v for t, v in zip(total, terms["reward_model"], strict=True)]
        if s.rule is not None:
            terms["rule"] = [rule_score(s.rule, r) for r in responses]
            total = [t + s.rule.weight * v for t, v in zip(total, terms["rule"], strict=True)]
        if self.judge is not None:
            from alignment.data import prompt_texts

            qs = prompt_texts([{"prompt": c} for c in chats])
            probs = self.judge.choose([{"prompt": q, "response": r, "question": s.judge_question}
                                       for q, r in zip(qs, responses, strict=True)], 2)
            terms["judge"] = [p[0] for p in probs]
            total = [t + s.judge_weight * v for t, v in zip(total, terms["judge"], strict=True)]
        return total, terms

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
