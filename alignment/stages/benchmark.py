"""Capability benchmarks of one model, run by lm-evaluation-harness (``lm_eval``, pinned).

The tasks are the project's local task files (``options.tasks``: data/benchmark/ ships four, each item
with an exact answer, so nothing is downloaded) and, where a hub is reachable, any lm-eval task by name
(``options.harness_tasks``). A local task is one JSONL file; each row is either

- **multiple choice** ``{"question", "choices": [...], "answer": <index>}``: lm-eval's log-likelihood
  ``multiple_choice`` (metric ``acc``), or
- **exact answer** ``{"question", "answer": "<text>"}``: lm-eval's greedy ``generate_until`` up to the
  first line break; the answer counts when the line, lower-cased and without punctuation and leading
  articles, equals the answer, or (numeric answers) when the last number in the line equals it
  (metric ``exact_match``), or
- **open answer** ``{"question", "answers": [...], "wrong": [...]}``: the question as a user would ask it
  (no "answer with the number only"), a greedy free answer, which counts when its first sentence states
  one of ``answers`` as a whole word (numbers also as digits with separators dropped) and no
  ``wrong`` one appears before it: "1 kilometre is 1000 metres" counts, "a kilometre is approximately
  1.60833 meters" does not (metric ``exact_match``; the main job's held-out answers, measured).

The harness builds these tasks from Python (``custom_dataset``, callables: no task YAML is rendered and
no task code is imported from a file), scores every item, and reports each task's mean and standard
error. The model is loaded by the project (``alignment.models``: safetensors, the built-in GGUF model,
stage artifacts) and handed to lm-eval's ``HFLM``. Through the model's chat template by default.

The key hashes the model's id, each task file's sha256, the options and the installed lm_eval version
(``SPEC.libraries``). Output: ``results.json`` (per task: metric, score, stderr, n), ``samples.jsonl``
(per item: task, doc id, score, the model's answer; what ``tax`` pairs), ``report.md``.
"""

import json
import re
import string
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from alignment.artifacts import StageResult
from alignment.config import BenchmarkStageConfig, DataSpec
from alignment.data import DataError, is_local, read_local_rows
from alignment.stages.contract import RunContext, StageSpec, cli

SPEC = StageSpec(
    name="benchmark",
    config=BenchmarkStageConfig,
    outputs={"results": "results.json", "samples": "samples.jsonl", "report": "report.md"},
    headline=("tasks", "items", "mean_score", "harness_version"),
    libraries=("lm_eval",),
)
MC, EXACT, OPEN = "multiple_choice", "exact", "open"
ARTICLES = re.compile(r"^(the|a|an)\s+")
NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


def harness_version() -> str:
    try:
        return version("lm_eval")
    except PackageNotFoundError:
        raise ImportError("the benchmark stage needs lm-evaluation-harness: pip install 'lm_eval==0.4.13' "
                          "(scripts/setup.sh installs it; requirements.lock pins it)") from None


def read_task(name: str, spec: DataSpec) -> tuple[str, list[dict[str, Any]]]:
    """The kind (multiple choice or exact answer) and items of a local task file; a bad row is a located
    error naming the file, the line, the key and the fix."""
    where = f"benchmark.tasks.{name}"
    if not is_local(spec):
        raise DataError(f"{where}.path: {spec.path!r} is not a local file; local tasks are JSONL files (an "
                        "lm-eval task by name goes under `harness_tasks`)")
    rows = read_local_rows(spec)
    if not rows:
        raise DataError(f"{spec.path}: no items; a task needs at least one row")
    kinds: set[str] = set()
    items = []
    for loc, row in rows:
        at = f"{spec.path} {loc}"
        if not isinstance(row, dict):
            raise DataError(f"{at}: expected a JSON object with `question` and `answer`, got {type(row).__name__}")
        q = row.get("question")
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{at}: question: {q!r}; fix: a non-empty string")
        if "choices" in row:
            ch, ans = row["choices"], row.get("answer")
            if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c.strip() for c in ch):
                raise DataError(f"{at}: choices: {ch!r}; fix: a list of two or more non-empty strings")
            if len(set(ch)) != len(ch):
                raise DataError(f"{at}: choices: {ch!r} repeat a choice; fix: make each choice different")
            if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(ch):
                raise DataError(f"{at}: answer: {ans!r} is not an index into its {len(ch)} choices; fix: the "
                                f"0-based index of the right choice (0 to {len(ch) - 1})")
            kinds.add(MC)
            items.append({"question": q, "choices": ch, "answer": ans})
        elif "answers" in row:
            ans, wrong = row["answers"], row.get("wrong", [])
            for key, value in (("answers", ans), ("wrong", wrong)):
                if not isinstance(value, list) or not all(isinstance(a, str | int) and normalise(str(a)) for a in value):
                    raise DataError(f"{at}: {key}: {value!r}; fix: a list of non-empty strings")
            if not ans:
                raise DataError(f"{at}: answers: []; fix: at least one accepted answer")
            clash = {normalise(str(a)) for a in ans} & {normalise(str(w)) for w in wrong}
            if clash:
                raise DataError(f"{at}: {sorted(clash)} is both accepted and wrong; fix: remove it from one list")
            kinds.add(OPEN)
            items.append({"question": q, "answers": [str(a) for a in ans], "wrong": [str(w) for w in wrong]})
        else:
            ans = row.get("answer")
            if isinstance(ans, int | float) and not isinstance(ans, bool):
                ans = str(ans)
            if not isinstance(ans, str) or not normalise(ans):
                raise DataError(f"{at}: answer: {ans!r}; fix: the exact answer as text (or add `choices` "
                                "and give the answer's index)")
            kinds.add(EXACT)
            items.append({"question": q, "answer": ans})
    if len(kinds) > 1:
        raise DataError(f"{spec.path}: mixes kinds of rows ({', '.join(sorted(kinds))}: `choices`, `answers` or "
                        "a single `answer`); fix: one kind per task file (split it)")
    return kinds.pop(), items


def normalise(text: str) -> str:
    text = text.strip().lower().translate(str.maketrans("", "", string.punctuation.replace("-", "")))
    return ARTICLES.sub("", " ".join(text.split()))


def exact(response: str, answer: str) -> bool:
    """The first line of `response` is `answer` (normalised), or, for a numeric answer, its last number."""
    line = response.strip().split("\n", 1)[0] if response.strip() else ""
    if NUMBER.fullmatch(answer.strip()):
        numbers = NUMBER.findall(line.replace(",", ""))
        return bool(numbers) and numbers[-1].rstrip(".") == answer.strip().replace(",", "")
    return normalise(line) == normalise(answer)


def _position(text: str, phrase: str) -> int | None:
    """Where `phrase` first appears in normalised `text` as whole words (None: it does not)."""
    m = re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text)
    return m.start() if m else None


def mentions(response: str, answers: list[str], wrong: list[str]) -> bool:
    """The first sentence of a free answer states one of `answers` (whole words, after normalising; numbers
    with their thousands separators dropped) and no `wrong` answer comes before it."""
    line = response.strip().split("\n", 1)[0] if response.strip() else ""
    text = _spoken(re.split(r"(?<=[.!?])\s+", line, maxsplit=1)[0])
    right = [p for a in answers if (p := _position(text, _spoken(a))) is not None]
    if not right:
        return False
    first = min(right)
    return not any((p := _position(text, _spoken(w))) is not None and p < first for w in wrong)


def _spoken(text: str) -> str:
    """Normalised, with 1,000 read as 1000 and 1.5 kept apart from 15."""
    return normalise(re.sub(r"(?<=\d)\.(?=\d)", "point", re.sub(r"(?<=\d),(?=\d{3})", "", text)))


def validate(config: BenchmarkStageConfig) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    harness_version()
    tasks = {name: read_task(name, spec) for name, spec in config.options.tasks.items()}
    if config.options.limit:
        tasks = {n: (k, items[: config.options.limit]) for n, (k, items) in tasks.items()}
    return tasks


def task_config(name: str, kind: str, items: list[dict[str, Any]], config: BenchmarkStageConfig) -> dict[str, Any]:
    """An lm-eval task, built in Python: the items as its test split, our scoring as its metric."""
    from datasets import Dataset, DatasetDict

    o = config.options
    common = {"task": name, "custom_dataset": lambda **_: DatasetDict({"test": Dataset.from_list(items)}),
              "test_split": "test", "doc_to_text": lambda d: d["question"], "metadata": {"version": 1},
              "target_delimiter": "" if o.chat_template else " "}
    if o.num_fewshot:
        common["fewshot_split"] = "test"
    if kind == MC:
        return {**common, "output_type": "multiple_choice", "doc_to_choice": lambda d: d["choices"],
                "doc_to_target": lambda d: d["answer"], "metric_list": [{"metric": "acc", "aggregation": "mean",
                                                                         "higher_is_better": True}]}
    if kind == OPEN:
        return {**common, "output_type": "generate_until", "doc_to_target": lambda d: d["answers"][0],
                "generation_kwargs": {"until": ["\n"], "max_gen_toks": o.open_max_new_tokens, "do_sample": False},
                "process_results": lambda doc, results: {
                    "exact_match": float(mentions(results[0], doc["answers"], doc["wrong"]))},
                "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}
    return {**common, "output_type": "generate_until", "doc_to_target": lambda d: d["answer"],
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": o.max_new_tokens, "do_sample": False},
            "process_results": lambda doc, results: {"exact_match": float(exact(results[0], doc["answer"]))},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}


def _sample_rows(task: str, metric: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        resp = s.get("filtered_resps") or s.get("resps")
        answer = resp[0] if resp and isinstance(resp[0], str) else None
        if answer is None and resp and isinstance(resp[0], list | tuple) and isinstance(resp[0][0], str):
            answer = resp[0][0]
        if answer is None and resp:  # multiple choice: the choice with the highest log-likelihood
            lls = [r[0][0] if isinstance(r[0], list | tuple) else r[0] for r in resp]
            choices = s["doc"].get("choices")
            answer = choices[max(range(len(lls)), key=lls.__getitem__)] if choices else None
        rows.append({"task": task, "doc_id": s["doc_id"], "score": float(s[metric]),
                     "question": s["doc"].get("question"), "answer": answer, "target": s.get("target")})
    return rows


def benchmark(out: Path, config: BenchmarkStageConfig, tasks: dict[str, tuple[str, list[dict[str, Any]]]],
              context: RunContext) -> dict[str, Any]:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from alignment.models import load_model, load_tokenizer

    o = config.options
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(config.model)
    model = load_model(config.model).to(device).eval()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=o.batch_size, device=device)
    built = [ConfigurableTask(config=task_config(n, kind, items, config)) for n, (kind, items) in tasks.items()]
    manager = TaskManager(include_defaults=bool(o.harness_tasks))  # indexing lm-eval's 200 task folders costs seconds
    result = simple_evaluate(model=lm, tasks=[*built, *o.harness_tasks], num_fewshot=o.num_fewshot or None,
                             limit=o.limit, apply_chat_template=o.chat_template, log_samples=True,
                             task_manager=manager, bootstrap_iters=1000, random_seed=0, numpy_random_seed=0,
                             torch_random_seed=0, fewshot_random_seed=0)
    per_task: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    for name, values in sorted(result["results"].items()):
        metric = next((m for m in ("acc", "exact_match", "acc_norm") if f"{m},none" in values),
                      next(k.split(",")[0] for k in values if k.endswith(",none") and not k.startswith(("alias", "sample"))))
        task_samples = result.get("samples", {}).get(name, [])
        stderr = values.get(f"{metric}_stderr,none")
        per_task[name] = {"metric": metric, "score": float(values[f"{metric},none"]),
                          "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                          "n": len(task_samples), "kind": tasks[name][0] if name in tasks else "lm-eval"}
        samples += _sample_rows(name, metric, task_samples)
    (out / SPEC.outputs["results"]).write_text(json.dumps(
        {"tasks": per_task, "harness_version": harness_version(), "model": config.model.name}, indent=2))
    with open(out / SPEC.outputs["samples"], "w", encoding="utf-8") as f:
        for row in samples:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    metrics: dict[str, Any] = {"tasks": len(per_task), "items": sum(t["n"] for t in per_task.values()),
                               "mean_score": sum(t["score"] for t in per_task.values()) / max(len(per_task), 1),
                               "harness_version": harness_version()}
    for name, t in per_task.items():
        metrics.update({f"{name}_score": t["score"], f"{name}_stderr": t["stderr"], f"{name}_n": t["n"]})
    (out / SPEC.outputs["report"]).write_text(report(config, per_task), encoding="utf-8")
    if context.progress:
        context.progress(1.0, {})
    return metrics


def report(config: BenchmarkStageConfig, per_task: dict[str, dict[str, Any]]) -> str:
    lines = [f"# Benchmark: {config.model.name}", "",
             f"lm-evaluation-harness {harness_version()}; {'chat template' if config.options.chat_template else 'plain prompts'}, "
             f"{config.options.num_fewshot}-shot. Score ± 1.96 × standard error.", "",
             "| task | kind | metric | items | score | 95% interval |", "|---|---|---|---|---|---|"]
    for name, t in per_task.items():
        ci = f"{t['score'] - 1.96 * t['stderr']:.3f}–{t['score'] + 1.96 * t['stderr']:.3f}" if t["stderr"] is not None else "—"
        lines.append(f"| {name} | {t['kind']} | {t['metric']} | {t['n']} | {t['score']:.3f} | {ci} |")
    return "\n".join(lines) + "\n"


def read_samples(result: StageResult | dict[str, Any] | str) -> dict[str, dict[int, float]]:
    """Per task, each item's score by doc id (what ``tax`` pairs between two models)."""
    path = Path(result) if isinstance(result, str) else SPEC.output(result, "samples").parent
    out: dict[str, dict[int, float]] = {}
    for line in (path / SPEC.outputs["samples"]).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out.setdefault(row["task"], {})[row["doc_id"]] = row["score"]
    return out


def read_answers(result: StageResult | dict[str, Any] | str) -> dict[str, dict[int, dict[str, Any]]]:
    """Per task, each item's question and the model's answer by doc id (the tax report's examples)."""
    path = Path(result) if isinstance(result, str) else SPEC.output(result, "samples").parent
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for line in (path / SPEC.outputs["samples"]).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out.setdefault(row["task"], {})[row["doc_id"]] = {"question": row["question"], "answer": row["answer"]}
    return out


def run(config: BenchmarkStageConfig, context: RunContext | None = None) -> StageResult:
    with SPEC.start(config, context) as job:  # holds the key's lock until the end
        inputs = validate(job.config)
        if job.done():  # stored already
            return job.result
        with job.writing() as out:
            job.commit(out, benchmark(out, job.config, inputs, job.context))
        return job.result


if __name__ == "__main__":
    cli(SPEC, run)
