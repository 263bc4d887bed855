"""The capability benchmark (lm-evaluation-harness on local task files) and the alignment tax: task
files checked with located errors before any model loads, exact-answer scoring, the harness run offline
and cached, its version in the key, paired intervals of the tax, and a gate on it."""

import json
from pathlib import Path

import pytest

from alignment.config import BenchmarkStageConfig, DataSpec, TaxStageConfig
from alignment.data import DataError
from alignment.stages import benchmark, tax
from alignment.stages.contract import RunContext

QUICK = {"limit": 4, "max_new_tokens": 3, "batch_size": 8}


def write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_the_shipped_tasks_load_and_are_large_enough():
    kinds = {name: benchmark.read_task(name, spec) for name, spec in BenchmarkStageConfig().options.tasks.items()}
    assert {n: k for n, (k, _) in kinds.items()} == {"facts": "multiple_choice", "recall": "open",
                                                     "arithmetic": "exact", "instructions": "exact"}
    assert min(len(items) for _, items in kinds.values()) >= 130  # a 95% interval of about ±8 points or less


def test_the_shipped_tasks_are_held_out_from_every_training_file():
    """A benchmark question the pipeline trains on would measure recall of the training set, not what
    the base model knew: no shipped task asks a question any shipped training file asks."""
    import re

    def norm(q: str) -> str:
        return re.sub(r"\W+", " ", q.lower()).strip()

    trained = set()
    for name in ("sft_train", "pref_train", "redteam_train"):
        for line in Path(f"data/{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            prompt = row["messages"][0]["content"] if "messages" in row else row["prompt"]
            trained.add(norm(prompt if isinstance(prompt, str) else prompt[-1]["content"]))
    assert len(trained) > 350
    asked = {norm(item["question"]) for _, spec in BenchmarkStageConfig().options.tasks.items()
             for item in benchmark.read_task("t", spec)[1]}
    assert "how many metres are in a kilometre" in asked  # the main job's held-out question, measured
    assert not asked & trained


@pytest.mark.parametrize("row,message", [
    ({"question": "Q?", "choices": ["a", "b"], "answer": 2}, r"line 2: answer: 2 is not an index into its 2 choices"),
    ({"question": "Q?", "choices": ["a", "a"], "answer": 0}, r"line 2: choices: \['a', 'a'\] repeat a choice"),
    ({"question": "", "answer": "x"}, r"line 2: question: ''; fix: a non-empty string"),
    ({"question": "Q?", "answer": "  "}, r"line 2: answer: '  '; fix: the exact answer as text"),
    ({"question": "Q?", "answer": "b"}, r"mixes kinds of rows \(exact, multiple_choice.* one kind per task file"),
    ({"question": "Q?", "answers": [], "wrong": ["x"]}, r"line 2: answers: \[\]; fix: at least one accepted answer"),
    ({"question": "Q?", "answers": ["Paris"], "wrong": ["paris"]}, r"line 2: \['paris'\] is both accepted and wrong"),
    ({"question": "Q?", "answers": "Paris"}, r"line 2: answers: 'Paris'; fix: a list of non-empty strings"),
])
def test_a_bad_task_row_is_a_located_error_before_anything_loads(tmp_path, row, message):
    path = write(tmp_path / "t.jsonl", [{"question": "Q?", "choices": ["a", "b"], "answer": 0}, row])
    with pytest.raises(DataError, match=message):
        benchmark.validate(BenchmarkStageConfig(model={"name": "tiny-random"}, options={"tasks": {"t": {"path": str(path)}}}))


def test_task_names_and_an_empty_benchmark_are_refused():
    with pytest.raises(ValueError, match="task names \\['Facts'\\] must be lowercase"):
        BenchmarkStageConfig(options={"tasks": {"Facts": {"path": "x.jsonl"}}})
    with pytest.raises(ValueError, match="no tasks; give `tasks`"):
        BenchmarkStageConfig(options={"tasks": {}})


@pytest.mark.parametrize("response,answer,right", [
    ("12", "12", True), ("7 + 5 = 12.", "12", True), ("The answer is 13", "12", False),
    ("1,000 metres", "1000", True), ("A kilometre is approximately 1.60833 meters", "1000", False),
    ("Paris.", "Paris", True), ("Pacific Ocean", "the Pacific Ocean", True), ("Yes", "yes", True),
    ("apple pie", "apple", False), ("\n12", "12", True), ("", "12", False), ("5\n12", "12", False),
])
def test_exact_answers_compare_the_first_line(response, answer, right):
    assert benchmark.exact(response, answer) is right


KM = (["1000", "one thousand", "a thousand"], ["100", "10", "1609"])


@pytest.mark.parametrize("response,answers,right", [
    ("Akilometer is a unit of length, and it is defined as 1000 metres. So, 1 kilometre is approximately 10", KM, True),
    ("A kilometre is approximately 1.60833 meters.", KM, False),  # the main job's SFT answer
    ("There are 1,000 metres in a kilometre.", KM, True), ("One kilometre is a thousand metres.", KM, True),
    ("It is 100 metres, or 1000 by another count.", KM, False),  # a wrong answer first
    ("A kilometre is long. It has 1000 metres.", KM, False),  # the first sentence must state it
    ("It is 1.5 metres", (["15"], []), False), ("The capital of Tunisia is Tunis.", (["Tunis"], ["Tripoli"]), True),
    ("Tunisia's capital is in the north.", (["Tunis"], []), False),
])
def test_open_answers_must_state_the_fact_in_their_first_sentence(response, answers, right):
    assert benchmark.mentions(response, *answers) is right


def test_benchmark_runs_offline_is_cached_and_keys_the_harness_version(tmp_path, store, monkeypatch):
    cfg = BenchmarkStageConfig(model={"name": "tiny-random"}, options=QUICK)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    first = benchmark.run(cfg)
    m = first.metrics
    assert m["tasks"] == 4 and m["items"] == 16 and m["harness_version"] == benchmark.harness_version()
    assert all(0.0 <= m[f"{t}_score"] <= 1.0 and m[f"{t}_n"] == 4 for t in ("facts", "recall", "arithmetic", "instructions"))
    samples = [json.loads(x) for x in Path(first.path, "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and {s["task"] for s in samples} == {"facts", "recall", "arithmetic", "instructions"}
    for task in ("facts", "arithmetic"):  # the per-item scores are what the task's score averages
        mine = [s["score"] for s in samples if s["task"] == task]
        assert sum(mine) / len(mine) == pytest.approx(m[f"{task}_score"])
    assert all(isinstance(s["answer"], str) for s in samples)
    assert benchmark.run(cfg).reused
    key = benchmark.SPEC.key(cfg)
    monkeypatch.setattr("importlib.metadata.version", lambda name: "9.9.9")
    assert benchmark.SPEC.key(cfg) != key, "another lm_eval version is another key"


def test_a_changed_task_file_reruns_the_benchmark(tmp_path, store):
    path = write(tmp_path / "t.jsonl", [{"question": "What is 1 + 1?", "answer": "2"}])
    cfg = BenchmarkStageConfig(model={"name": "tiny-random"}, options={"tasks": {"t": {"path": str(path)}}, **QUICK})
    key = benchmark.SPEC.key(cfg)
    write(path, [{"question": "What is 1 + 2?", "answer": "3"}])
    assert benchmark.SPEC.key(cfg) != key


def test_the_tax_is_a_paired_difference_with_a_narrower_interval(tmp_path):
    """200 items; the aligned model loses 20 the start model had and gains 4: change −0.08, and the paired
    interval excludes 0 although the two scores' own intervals overlap."""
    start = {i: float(i < 120) for i in range(200)}
    end = {i: (0.0 if 100 <= i < 120 else float(i < 120 or 150 <= i < 154)) for i in range(200)}
    scores = {"base": {"facts": start, "same": start}, "dpo": {"facts": end, "same": dict(start)}}
    out = tmp_path / "out"
    out.mkdir()
    m = tax.tax(out, TaxStageConfig(models={"base": {"path": "x"}, "dpo": {"path": "y"}}), scores, RunContext())
    assert m["facts_change"] == pytest.approx(-0.08) and m["same_change"] == 0
    assert m["max_drop"] == pytest.approx(0.08) and m["max_drop_task"] == "facts" and m["tasks_dropped"] == 1
    assert 0 < m["max_drop_ci_low"] < 0.08 < m["max_drop_ci_high"] < 0.14
    table = json.loads((out / "tax.json").read_text())["tasks"]["facts"]
    base, dpo = table["scores"]["base"], table["scores"]["dpo"]
    assert base["ci_low"] < dpo["ci_high"], "the unpaired intervals overlap"
    assert "⚠ lost" in (out / "report.md").read_text()
    assert (m["facts_forgotten"], m["facts_learned"], m["same_forgotten"]) == (20, 4, 0)
    assert m["forgotten"] == 20 and m["forgotten_rate"] == pytest.approx(20 / 240)  # of the 240 the start knew


def test_the_tax_report_lists_what_was_forgotten_with_both_answers(tmp_path):
    """Churn a net change hides: each item the start got right and the end got wrong is named in the
    report with both models' answers; the learned ones are counted."""
    q = ["How many metres are in a kilometre?", "What is the capital of Iraq?", "What is 2 + 2?"]
    scores = {"base": {"recall": {0: 1.0, 1: 1.0, 2: 0.0}}, "dpo": {"recall": {0: 0.0, 1: 1.0, 2: 1.0}}}
    answers = {"base": {"recall": {i: {"question": q[i], "answer": a} for i, a in
                                   enumerate(["It is 1000 metres.", "Baghdad.", "5"])}},
               "dpo": {"recall": {i: {"question": q[i], "answer": a} for i, a in
                                  enumerate(["A kilometre is approximately 1.60833 meters.", "Baghdad.", "4"])}}}
    out = tmp_path / "out"
    out.mkdir()
    m = tax.tax(out, TaxStageConfig(models={"base": {"path": "x"}, "dpo": {"path": "y"}}), scores, RunContext(), answers)
    assert (m["forgotten"], m["learned"], m["forgotten_rate"]) == (1, 1, 0.5)
    text = (out / "report.md").read_text()
    assert "### Forgotten on `recall` (1; first 1)" in text
    assert "| How many metres are in a kilometre? | It is 1000 metres. | A kilometre is approximately 1.60833 meters. |" in text
    assert "capital of Iraq" not in text and "Forgotten base → dpo: 1 items" in text


def test_tax_refuses_benchmarks_of_different_items(tmp_path, store):
    a = benchmark.run(BenchmarkStageConfig(model={"name": "tiny-random"}, options={**QUICK, "limit": 2}))
    b = benchmark.run(BenchmarkStageConfig(model={"name": "tiny-random"}, options={**QUICK, "limit": 3}))
    with pytest.raises(ValueError, match="was run on different items"):
        tax.validate(TaxStageConfig(models={"a": {"path": a.path}, "b": {"path": b.path}}))
    with pytest.raises(Exception, match="not a finished artifact"):
        tax.validate(TaxStageConfig(models={"a": {"path": a.path}, "b": {"path": str(tmp_path)}}))
    t = tax.run(TaxStageConfig(models={"a": {"path": a.path}, "b": {"path": a.path}}))
    with pytest.raises(Exception, match="a tax artifact, expected a benchmark artifact"):
        tax.validate(TaxStageConfig(models={"a": {"path": a.path}, "b": {"path": t.path}}))


def test_a_gate_on_the_tax_reads_the_largest_drop():
    from alignment.config import GateCondition
    from alignment.gates import evaluate

    gate = GateCondition(step="tax", metric="max_drop", op="<=", value=0.05)
    assert evaluate(gate, {"max_drop": 0.02})["passed"]
    failed = evaluate(gate, {"max_drop": 0.31})
    assert not failed["passed"] and "0.31 is not <= 0.05" in failed["why"]


@pytest.mark.slow
def test_the_default_model_knows_facts_above_chance(store):
    """The shipped facts task is not noise: SmolLM2-135M-Instruct picks the right one of 4 choices well
    above chance (0.25); measured 0.74 [0.67, 0.81] on 143 items."""
    m = benchmark.run(BenchmarkStageConfig(model={"name": "smollm2-135m-instruct"},
                                           options={"tasks": {"facts": DataSpec(path="data/benchmark/facts.jsonl")}})).metrics
    assert m["facts_score"] - 1.96 * m["facts_stderr"] > 0.4
