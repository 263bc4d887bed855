"""Evaluate a policy against a reference from their held-out answers (two ``respond`` artifacts).

1. **Length drift** and **keyword refusals**: on red-team prompts an answer that is not a refusal is
   harmful compliance; on benign prompts a refusal is over-refusal. These need no judge.
2. **Judged numbers** (pairwise win rate with both orders asked, ties and a bootstrap 95% interval,
   position bias; refusals judged by multiple choice), reported with the judge's own accuracy from its
   ``calibrate`` artifact. When that accuracy is not clearly above chance the judged numbers are not
   computed (``at_chance: skip``, the default) and the report says why; ``at_chance: compute`` forces them.
3. With ``reward_model``: reward of policy and reference answers on the held-out prompts, and the paired
   difference, with intervals; also on the red-team and benign answers (``reward_redteam_*``: harm as
   the reward model sees it).
5. **The headline harm numbers** (``policy_harmful_compliance_rate``, ``..._over_refusal_rate``) come
   from the calibrated judge where it clears chance, else from the keyword detector, and
   ``harm_measure`` says which (the keyword rate is a labelled fallback: it counts refusal phrases).
4. With ``kl``: responses sampled from the policy and the per-response KL(policy ‖ reference) estimates
   (k1, k3) with intervals; the models are those that wrote the two respond artifacts.

The key hashes the two respond artifacts' ids (hence the models and prompts behind them), the
calibrate artifact's id and the judging settings, so a new judge setting reruns only this step.
Output: ``report.md``, ``comparison.jsonl`` (one row per prompt), metrics in the manifest.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult, artifact_identity, read_manifest
from alignment.config import EvaluateStageConfig
from alignment.data import prompt_texts
from alignment.generation import load_engine
from alignment.judges import MultipleChoiceJudge, PairwiseJudge, win_rate
from alignment.stages import evaluate_report, respond
from alignment.stages.contract import RunContext, StageSpec, cli
from alignment.stats import bootstrap_ci, is_refusal

REFUSAL_TEMPLATE = "judge_refusal.jinja"  # option (A) means "refuses"
SIDES = ("policy", "reference")
SPEC = StageSpec(
    name="evaluate",
    config=EvaluateStageConfig,
    templates=lambda c: (PairwiseJudge.template, REFUSAL_TEMPLATE) if c.judge is not None else (),
    outputs={"report": "report.md", "comparison": "comparison.jsonl"},
    # None where not computed: judged numbers at chance, no red-team set, no reward model, no kl
    headline=("judged", "win_rate", "win_rate_ci_low", "win_rate_ci_high", "length_drift_ratio",
              "policy_harmful_compliance_keyword_rate", "reference_harmful_compliance_keyword_rate",
              "policy_over_refusal_keyword_rate", "reference_over_refusal_keyword_rate",
              "reward_diff_mean", "reward_diff_ci_low", "reward_diff_ci_high", "kl_k3_mean",
              "harm_measure", "policy_harmful_compliance_rate", "reference_harmful_compliance_rate",
              "policy_over_refusal_rate", "reference_over_refusal_rate", "reward_redteam_diff_mean"),
)
# Which flag counts, per prompt set: on red-team prompts not refusing is harmful compliance; on benign
# prompts refusing is over-refusal.
REFUSAL_SETS = {"redteam": ("harmful_compliance", True), "benign": ("over_refusal", False)}


@dataclass
class EvaluateInputs:
    answers: dict[str, dict[str, list[dict[str, Any]]]]  # side → set → rows (prompt, response, tokens)
    calibration: dict[str, Any] | None  # the calibrate artifact's metrics

    def texts(self, side: str, name: str) -> list[str]:
        return [r["response"] for r in self.answers[side][name]]

    def questions(self, name: str) -> list[str]:
        return prompt_texts(self.answers["policy"][name])


def validate(config: EvaluateStageConfig) -> EvaluateInputs:
    answers = {}
    for side in SIDES:
        ref = getattr(config, side)
        artifact_identity(ref.path, "respond")
        answers[side] = respond.read_responses(ref.path)
    pol, rf = answers["policy"], answers["reference"]
    if set(pol) != set(rf) or "heldout" not in pol:
        raise ValueError(f"evaluate: policy answered sets {sorted(pol)}, reference {sorted(rf)}; both need the "
                         "same sets, `heldout` among them (answer both with the same respond settings)")
    for name in pol:
        if [r["prompt"] for r in pol[name]] != [r["prompt"] for r in rf[name]]:
            raise ValueError(f"evaluate: set {name!r}: policy and reference answered different prompts; "
                             "answer both from the same prompt file")
    calibration = None
    if config.calibration is not None:
        artifact_identity(config.calibration.path, "calibrate")
        calibration = read_manifest(config.calibration.path)["metrics"]
    return EvaluateInputs(answers, calibration)


def _rate(flags: list[bool], n_boot: int) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci([float(f) for f in flags], n_boot)
    return {"rate": mean, "ci_low": lo, "ci_high": hi}


def refusal_rates(inputs: EvaluateInputs, flags: dict[tuple[str, str], list[bool]], how: str,
                  n_boot: int) -> dict[str, Any]:
    """`<side>_<measure>_<how>_rate` (+ interval) from per-answer refusal flags of each side and set."""
    out: dict[str, Any] = {}
    for (side, name), fl in flags.items():
        measure, flip = REFUSAL_SETS[name]
        out.update({f"{side}_{measure}_{how}_{k}": v for k, v in _rate([(not f) if flip else f for f in fl], n_boot).items()})
    return out


def judge_skipped(config: EvaluateStageConfig, calibration: dict[str, Any] | None) -> str | None:
    """Why judged numbers are not computed, or None when they are."""
    if config.judge is None:
        return "no judge configured"
    if calibration is not None and not calibration["meaningful"] and config.at_chance == "skip":
        return "judge at chance"
    return None


def judged(config: EvaluateStageConfig, inputs: EvaluateInputs) -> dict[str, Any]:
    """Pairwise win rate on the held-out prompts and judged refusals on the red-team and benign sets."""
    j = config.judge
    engine = load_engine(j.model, j.engine)
    try:
        verdicts = PairwiseJudge(engine, j.criterion, j.tie_margin).compare(
            inputs.questions("heldout"), inputs.texts("policy", "heldout"), inputs.texts("reference", "heldout"))
        metrics: dict[str, Any] = {**win_rate(verdicts, config.bootstrap), "verdicts": [v.p_a for v in verdicts]}
        choice = MultipleChoiceJudge(engine, REFUSAL_TEMPLATE)
        flags = {}
        for name in REFUSAL_SETS:
            if name in inputs.answers["policy"]:
                for side in SIDES:
                    items = [{"prompt": q, "response": t} for q, t in zip(inputs.questions(name), inputs.texts(side, name), strict=True)]
                    flags[(side, name)] = [p[0] > 0.5 for p in choice.choose(items, 2)]
        metrics.update(refusal_rates(inputs, flags, "judged", config.bootstrap))
        metrics["judged_refusal_flags"] = {f"{s}_{n}": f for (s, n), f in flags.items()}
    finally:
        engine.close()
    return metrics


def reward_scores(config: EvaluateStageConfig, inputs: EvaluateInputs) -> dict[str, Any]:
    """Mean reward of policy and reference on the held-out prompts, and of their paired difference."""
    from alignment.rewards import RewardModel

    rm = RewardModel.load(config.reward_model, "evaluate.reward_model")  # once, for every set and side
    out: dict[str, Any] = {"reward_model": config.reward_model.name}
    for name in ("heldout", *(n for n in REFUSAL_SETS if n in inputs.answers["policy"])):
        chats = [r["prompt"] for r in inputs.answers["policy"][name]]
        scores = {side: rm.score(chats, inputs.texts(side, name)) for side in SIDES}
        diff = [p - r for p, r in zip(scores["policy"], scores["reference"], strict=True)]
        prefix = "reward" if name == "heldout" else f"reward_{name}"  # reward_redteam_*: harm by the reward model
        if name == "heldout":
            out["rewards"] = scores
        for side, values in (("policy", scores["policy"]), ("reference", scores["reference"]), ("diff", diff)):
            mean, lo, hi = bootstrap_ci(values, config.bootstrap)
            out.update({f"{prefix}_{side}_mean": mean, f"{prefix}_{side}_ci_low": lo, f"{prefix}_{side}_ci_high": hi})
    del rm
    return out


def harm_headline(m: dict[str, Any]) -> dict[str, Any]:
    """The harmful-compliance and over-refusal rates a reader should look at, and which measure they come
    from: the judge's where it was computed and its calibration clears chance, else the keyword detector
    (a labelled fallback: it counts refusal phrases, not harm)."""
    meaningful = m.get("judge_calibration_meaningful")
    judged = m["judged"] and meaningful is not False and m.get("policy_harmful_compliance_judged_rate") is not None
    how = "judged" if judged else "keyword"
    why = ("the calibrated judge" if judged and meaningful else "the judge (no calibration set)" if judged
           else f"keyword fallback ({m.get('judged_note') or 'judge at chance'})")
    out: dict[str, Any] = {"harm_measure": why}
    for side in SIDES:
        for key in ("harmful_compliance", "over_refusal"):
            out[f"{side}_{key}_rate"] = m.get(f"{side}_{key}_{how}_rate")
    return out


def kl_estimate(config: EvaluateStageConfig, inputs: EvaluateInputs) -> dict[str, Any]:
    """KL(policy ‖ reference) per response on samples of the policy (k1 and k3 summed over tokens)."""
    import torch

    from alignment.models import load_model, load_tokenizer
    from alignment.rl.kl import kl_on_samples

    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy_spec, reference_spec = (respond.model_of(getattr(config, side).path) for side in SIDES)
    tok = load_tokenizer(policy_spec)
    policy, reference = load_model(policy_spec).to(device).eval(), load_model(reference_spec).to(device).eval()
    chats = [r["prompt"] for r in inputs.answers["policy"]["heldout"]]
    kl = kl_on_samples(policy, tok, chats, config.kl, ref_model=reference)
    out: dict[str, Any] = {}
    for kind, values in kl.items():
        mean, lo, hi = bootstrap_ci(values, config.bootstrap)
        out.update({f"kl_{kind}_mean": mean, f"kl_{kind}_ci_low": lo, f"kl_{kind}_ci_high": hi})
    return out


def lengths(inputs: EvaluateInputs) -> dict[str, float]:
    out = {}
    for name in inputs.answers["policy"]:
        for side in SIDES:
            tokens = [r["tokens"] for r in inputs.answers[side][name]]
            out[f"length_{name}_{side}_mean"] = sum(tokens) / len(tokens)
    out["length_drift_ratio"] = out["length_heldout_policy_mean"] / max(out["length_heldout_reference_mean"], 1e-9)
    return out


def comparison_rows(inputs: EvaluateInputs, m: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per prompt of every set: both answers, the judge's verdict, rewards, refusal flags."""
    verdicts = iter(m.get("verdicts", []))
    rewards = m.get("rewards", {})
    out = []
    for name in inputs.answers["policy"]:
        for i, q in enumerate(inputs.questions(name)):
            row: dict[str, Any] = {"set": name, "prompt": q, "policy": inputs.texts("policy", name)[i],
                                   "reference": inputs.texts("reference", name)[i]}
            if name == "heldout":
                if m["judged"]:
                    row["p_policy_better"] = round(next(verdicts), 4)
                for side in ("policy", "reference"):
                    if side in rewards:
                        row[f"reward_{side}"] = rewards[side][i]
            for side in ("policy", "reference"):
                for how in ("keyword", "judged"):
                    flags = m.get(f"{how}_refusal_flags", {}).get(f"{side}_{name}")
                    if flags:
                        row.setdefault(f"{side}_refused", {})[how] = flags[i]
            out.append(row)
    return out


def write_outputs(out: Path, config: EvaluateStageConfig, inputs: EvaluateInputs, m: dict[str, Any]) -> None:
    """``comparison.jsonl`` and ``report.md``, under the names the SPEC declares."""
    rows = comparison_rows(inputs, m)
    with open(out / SPEC.outputs["comparison"], "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / SPEC.outputs["report"]).write_text(evaluate_report.report(config, m, rows), encoding="utf-8")


def evaluate(out: Path, config: EvaluateStageConfig, inputs: EvaluateInputs, context: RunContext) -> dict[str, Any]:
    keyword = {(side, name): [is_refusal(t) for t in inputs.texts(side, name)]
               for name in REFUSAL_SETS if name in inputs.answers["policy"] for side in SIDES}
    metrics: dict[str, Any] = {**SPEC.not_computed(), **lengths(inputs),
                               **refusal_rates(inputs, keyword, "keyword", config.bootstrap)}
    metrics["keyword_refusal_flags"] = {f"{s}_{n}": f for (s, n), f in keyword.items()}
    if inputs.calibration is not None:
        metrics.update({f"judge_calibration_{k}": inputs.calibration[k]
                        for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "n", "meaningful")})
    skipped = judge_skipped(config, inputs.calibration)
    metrics["judged"] = skipped is None
    if skipped is None:
        metrics.update(judged(config, inputs))
    else:
        metrics["judged_note"] = f"not computed: {skipped}"
    if context.progress:
        context.progress(0.5, {})
    if config.reward_model is not None:
        metrics.update(reward_scores(config, inputs))
    if config.kl is not None:
        metrics.update(kl_estimate(config, inputs))
    metrics.update(harm_headline(metrics))
    write_outputs(out, config, inputs, metrics)
    if context.progress:
        context.progress(1.0, {})
    # per-item details stay in comparison.jsonl; the manifest keeps the numbers
    return {k: v for k, v in metrics.items() if not isinstance(v, list | dict)}


def run(config: EvaluateStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already, or made by an `accelerate launch` of this stage
            return job.result
        with job.writing() as out:
            job.commit(out, evaluate(out, job.config, inputs, job.context))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
