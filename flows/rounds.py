"""Rounds of iterative (online) DPO, shared by the `iterative-dpo` flow and `constitutional-ai`'s
`rl_method: iterative-dpo`. No ML logic here: every part of a round is a stage, run through the chain.

Round n (labels ``round-<n>-<part>``): ``generate`` (k samples per training prompt from the current
policy, seed + 100·(n−1)) → a labelling step (``pairs``: reward sources score every sample, best vs
worst; or ``feedback``: the constitution compares them) → ``dpo`` from the current policy (reference:
the round's start, or the first start when ``iterate.reference: fixed``) → ``respond`` (held-out
answers) → ``evaluate`` against the start model's answers. Each part is a cached task, so a rerun of an
unchanged recipe is all ``Cached``; ``refresh: [round-<n>]`` salts every part of round n and of the
rounds after it (the rerun-round-<n> deployments), and nothing before it.

The held-out score that early stopping reads is the reward model's mean score of the round's answers
(``reward_policy_mean``), or, without a reward model, the judge's win rate against the start model
when the judge is meaningful; with neither, every round runs and the report says so. After
``iterate.patience`` rounds in a row that do not beat the best so far by ``iterate.min_improvement``,
the loop stops; the best round (or the start model, if no round beat it) is the flow's result.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from alignment.config import (
    DataSpec,
    DPOOptions,
    DPOStageConfig,
    GenerateStageConfig,
    ModelSpec,
    RoundOptions,
)
from alignment.stages.pairs import NoPairs
from flows import evaluation
from flows.chain import Chain
from flows.evaluation import model_from, respond_config
from flows.tasks import data_of

ROUND = "round-{n}"


def label(n: int, part: str) -> str:
    return f"{ROUND.format(n=n)}-{part}"


def round_steps(rounds: int) -> tuple[str, ...]:
    return tuple(ROUND.format(n=n) for n in range(1, rounds + 1))


def round_labels(rounds: int, parts: tuple[str, ...]) -> tuple[str, ...]:
    """Every chain label of the rounds (what gates may name)."""
    return tuple(label(n, p) for n in range(1, rounds + 1) for p in parts)


def expand_refresh(refresh: list[str] | None, known: tuple[str, ...], rounds: int, parts: tuple[str, ...]) -> list[str]:
    """Chain labels to refresh: a fixed step as it is; ``round-<n>`` → every part of rounds n..`rounds`.
    An unknown name is an error naming the steps there are (parameters come from the API too)."""
    out: list[str] = []
    for name in refresh or []:
        if name not in known:
            raise ValueError(f"refresh: unknown step {name!r}; this recipe's steps are {', '.join(known)}")
        if name.startswith("round-"):
            first = int(name.removeprefix("round-"))
            out += [label(n, p) for n in range(first, rounds + 1) for p in parts]
        else:
            out.append(name)
    return out


def held_out_score(metrics: dict[str, Any]) -> tuple[str | None, float | None]:
    """What early stopping compares: the reward model's mean held-out score, else the judge's win rate."""
    if metrics.get("reward_policy_mean") is not None:
        return "reward_policy_mean", metrics["reward_policy_mean"]
    if metrics.get("judged") and metrics.get("win_rate") is not None:
        return "win_rate", metrics["win_rate"]
    return None, None


def start_score(metrics: dict[str, Any], name: str | None) -> float | None:
    """The start model's value of the same score (its answers are every round's reference)."""
    return {"reward_policy_mean": metrics.get("reward_reference_mean"), "win_rate": 0.5}.get(name or "")


@dataclass
class Round:
    n: int
    model: ModelSpec
    answers: dict[str, Any]
    labels: dict[str, Any]
    dpo: dict[str, Any]
    evaluation: dict[str, Any]
    eval_config: Any  # the round's evaluate config: the flow's final `evaluate` step reuses it
    run_seconds: float
    compute_seconds: float


@dataclass
class Outcome:
    rounds: list[Round] = field(default_factory=list)
    score_name: str | None = None
    start: float | None = None
    best: int = 0  # 0: the start model
    stopped: str = ""

    def model(self, start: ModelSpec) -> ModelSpec:
        return start if self.best == 0 else self.rounds[self.best - 1].model

    def answers(self, start_answers: dict[str, Any]) -> dict[str, Any]:
        return start_answers if self.best == 0 else self.rounds[self.best - 1].answers

    def table(self) -> list[dict[str, Any]]:
        """One row per round: held-out score with its interval, pairs, length, KL, judge, time."""
        rows = []
        for r in self.rounds:
            m, lab = r.evaluation["metrics"], r.labels["metrics"]
            rows.append({
                "round": r.n,
                "best": "yes" if r.n == self.best else "",
                "heldout_reward": m.get("reward_policy_mean"),
                "heldout_reward_ci": _ci(m, "reward_policy"),
                "gain_vs_start": m.get("reward_diff_mean"),
                "gain_ci": _ci(m, "reward_diff"),
                "win_rate": m.get("win_rate") if m.get("judged") else None,
                "win_rate_note": "" if m.get("judged") else m.get("judged_note", "no judge"),
                "pairs_kept": lab.get("pairs_kept"),
                "pairs_dropped": (lab.get("pairs_dropped_margin") or 0) + (lab.get("pairs_identical") or 0)
                if "pairs_dropped_margin" in lab else (lab.get("pairs", 0) - lab.get("pairs_kept", 0)),
                "dpo_loss": r.dpo["metrics"].get("train_loss"),
                "length_tokens": m.get("length_heldout_policy_mean"),
                "length_drift_ratio": m.get("length_drift_ratio"),
                "kl_to_start": m.get("kl_k3_mean"),
                "seconds_this_run": round(r.run_seconds, 1),
                "seconds_to_compute": round(r.compute_seconds, 1),
            })
        return rows


def _ci(m: dict[str, Any], name: str) -> str:
    lo, hi = m.get(f"{name}_ci_low"), m.get(f"{name}_ci_high")
    return "" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def _compute_seconds(results: list[dict[str, Any]]) -> float:
    """What the round's artifacts took to make (their manifests), whether made now or reused."""
    total = 0.0
    for r in results:
        try:
            total += json.loads((Path(r["path"]) / "manifest.json").read_text())["duration_s"]
        except (OSError, ValueError, KeyError):
            pass
    return total


@dataclass
class Stopper:
    """Early stopping on the held-out score: a round improves when its score beats the best so far (the
    start model's at first) by more than `min_improvement`; after `patience` rounds in a row that do not,
    stop (never, with `patience` None). The best round is the one with the best score (0: the start)."""

    patience: int | None
    min_improvement: float
    best_score: float | None = None
    best: int = 0
    stale: int = 0

    def update(self, n: int, score: float) -> bool:
        """Record round n's score; True: stop after it."""
        if self.best_score is None or score > self.best_score + self.min_improvement:
            self.best, self.best_score, self.stale = n, score, 0
            return False
        self.stale += 1
        return self.patience is not None and self.stale >= self.patience


Labeller = Callable[[int, DataSpec], tuple[str, Any]]  # (round, samples) → (part name, stage config)


def run(chain: Chain, recipe, opts: RoundOptions, dpo: DPOOptions, start: ModelSpec, start_answers: dict[str, Any],
        prompts: DataSpec, labeller: Labeller, reward_model: ModelSpec | None) -> Outcome:
    """Run (or reuse) the rounds; stop early per `opts`. `labeller` builds the round's labelling step."""
    cal_config = evaluation.calibrate_config(recipe)
    calibration = chain.run("calibrate", cal_config) if cal_config is not None else None
    outcome, current = Outcome(), start
    stopper = Stopper(opts.patience, opts.min_improvement)
    for n in range(1, opts.rounds + 1):
        began = time.time()
        sampling = opts.sampling.model_copy(update={"seed": opts.sampling.seed + 100 * (n - 1)})
        samples = chain.run(label(n, "generate"), GenerateStageConfig(
            model=current, prompts=prompts, generation=sampling, engine=recipe.engine, num_samples=opts.samples_per_prompt))
        part, config = labeller(n, data_of(samples, "generate", "completions"))
        try:
            labels = chain.run(label(n, part), config)
        except NoPairs as e:
            if n == 1:
                raise ValueError(f"round 1: {e} (in this recipe: iterate.min_margin, iterate.sampling.temperature, "
                                 "iterate.samples_per_prompt)") from None
            outcome.stopped = f"stopped before round {n}'s DPO: its samples gave no pair ({e})"
            break
        if labels["metrics"].get("pairs_kept") == 0:  # feedback drops pairs by its own min_margin
            outcome.stopped = f"stopped before round {n}'s DPO: {part} kept no pair"
            break
        reference = start if opts.reference == "fixed" and n > 1 else None
        trained = chain.run(label(n, "dpo"), DPOStageConfig(
            model=current, reference=reference, data=data_of(labels, labels["stage"], "preferences"), options=dpo))
        current = model_from(trained, recipe.model)
        answers = chain.run(label(n, "respond"), respond_config(recipe, current))
        ev_config = evaluation.evaluate_config(recipe, answers, start_answers, calibration, reward_model)
        ev = chain.run(label(n, "evaluate"), ev_config)
        outcome.rounds.append(Round(n, current, answers, labels, trained, ev, ev_config, time.time() - began,
                                    _compute_seconds([samples, labels, trained, answers, ev])))
        name, score = held_out_score(ev["metrics"])
        if n == 1:
            outcome.score_name, outcome.start = name, start_score(ev["metrics"], name)
            stopper.best_score = outcome.start
        if name is None:
            continue
        stop = stopper.update(n, score)
        outcome.best = stopper.best
        if stop:
            outcome.stopped = (f"stopped after round {n}: {stopper.stale} round(s) without raising {name} above "
                               f"{stopper.best_score:.4g} ({f'round {stopper.best}' if stopper.best else 'the start model'})"
                               f" by more than {opts.min_improvement:g} (iterate.patience = {opts.patience})")
            break
    if outcome.score_name is None and outcome.rounds:
        outcome.best = len(outcome.rounds)  # nothing to choose by: the last round
        why = "no held-out score to choose by (no reward model, no meaningful judge): the last round is the result"
        outcome.stopped = f"{outcome.stopped}; {why}" if outcome.stopped else f"every round ran; {why}"
    elif not outcome.stopped:
        best = f"round {outcome.best}" if outcome.best else "the start model (no round beat it)"
        outcome.stopped = f"every round ran ({len(outcome.rounds)}); the best is {best}"
    get_run_logger().info("rounds: %s", outcome.stopped)
    return outcome
