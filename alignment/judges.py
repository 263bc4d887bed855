"""LLM judges (ours: TRL 1.16 removed its judges): pairwise, and multiple choice with soft labels.

Both talk to a generation ``Engine``, so the judge can be the default model, a bigger local one or an
endpoint. Multiple choice follows the Constitutional AI paper's feedback method (Bai et al. 2022,
arXiv:2212.08073, §4.1): the judge is asked a question with lettered options (a template in
``prompts/``) and the normalised probabilities of the option letters are the soft labels. Pairwise asks
in both orders, so the position bias of the judge is measured, not hidden; a near-even verdict is a tie.
The judge's own accuracy is the ``calibrate`` stage's job.
"""

import math
from dataclasses import dataclass
from typing import Any

from alignment.generation.base import Chat, Engine
from alignment.prompts import render, template_version
from alignment.stats import bootstrap_ci

LETTERS = "ABCDEFGHIJ"


def normalise(logps: list[float]) -> list[float]:
    """Soft labels from option log-probs: ``softmax(logps)``, shape (n_options,), sums to 1."""
    top = max(logps)
    exp = [math.exp(x - top) for x in logps]
    total = sum(exp)
    return [e / total for e in exp]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class MultipleChoiceJudge:
    """Questions with lettered options, rendered from `template`; per item the probabilities of its
    options (letters scored right after the assistant turn starts). `prefix` turns (worked examples)
    may precede each question."""

    def __init__(self, engine: Engine, template: str):
        self.engine, self.template = engine, template

    @property
    def version(self) -> str:
        return template_version(self.template)

    def choose(self, items: list[dict[str, Any]], n_options: int | list[int],
               prefixes: list[Chat] | None = None) -> list[list[float]]:
        counts = [n_options] * len(items) if isinstance(n_options, int) else n_options
        chats = [list(prefixes[i] if prefixes else []) + _user(render(self.template, **v)) for i, v in enumerate(items)]
        letters = [[LETTERS[i] for i in range(n)] for n in counts]
        return [normalise(lp) for lp in self.engine.score(chats, letters)]


@dataclass
class PairwiseVerdict:
    p_a: float  # probability that response A is better, averaged over both presentation orders
    p_first: float  # probability of picking whichever response was shown first (0.5 = no position bias)
    winner: str  # "a", "b" or "tie"


class PairwiseJudge:
    template = "judge_pairwise.jinja"

    def __init__(self, engine: Engine, criterion: str, tie_margin: float = 0.05):
        self.engine, self.criterion, self.tie_margin = engine, criterion, tie_margin

    @property
    def version(self) -> str:
        return template_version(self.template)

    def compare(self, questions: list[str], a: list[str], b: list[str]) -> list[PairwiseVerdict]:
        chats = []
        for q, x, y in zip(questions, a, b, strict=True):
            chats.append(_user(render(self.template, question=q, response_a=x, response_b=y, criterion=self.criterion)))
            chats.append(_user(render(self.template, question=q, response_a=y, response_b=x, criterion=self.criterion)))
        probs = [normalise(lp) for lp in self.engine.score(chats, [["A", "B"]] * len(chats))]
        out = []
        for ab, ba in zip(probs[0::2], probs[1::2], strict=True):
            p_a = (ab[0] + ba[1]) / 2  # A shown first, then A shown second
            p_first = (ab[0] + ba[0]) / 2
            winner = "tie" if abs(p_a - 0.5) < self.tie_margin else ("a" if p_a > 0.5 else "b")
            out.append(PairwiseVerdict(p_a=p_a, p_first=p_first, winner=winner))
        return out


def win_rate(verdicts: list[PairwiseVerdict], n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Share of items A wins (ties count one half), with a bootstrap 95% interval, and position bias."""
    scores = [1.0 if v.winner == "a" else 0.5 if v.winner == "tie" else 0.0 for v in verdicts]
    mean, lo, hi = bootstrap_ci(scores, n_boot, seed)
    return {"win_rate": mean, "win_rate_ci_low": lo, "win_rate_ci_high": hi, "n": len(scores),
            "ties": sum(v.winner == "tie" for v in verdicts),
            "position_bias": sum(v.p_first for v in verdicts) / len(verdicts) - 0.5}
