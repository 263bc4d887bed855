"""A catalogue of hostile inputs, each through the CLI as a user meets it: data files of every format,
recipes, overrides, constitutions and prompt templates. Every one must end in exit code 2 with a message
naming the file (and line, row or key), the bad value and the fix: no traceback, no model loaded, nothing
written to the store. The table of messages is written to test-output/hostile-inputs.md."""

import gzip
import json
from pathlib import Path

import pytest
import yaml

from flows.service import cli

ROOT = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((ROOT / "flows" / "recipes" / "tiny.yaml").read_text())
RESULTS: dict[str, str] = {}
MSG = {"role": "user", "content": "hi"}
ANSWER = {"role": "assistant", "content": "hello"}


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def recipe_with(tmp: Path, changes: dict) -> Path:
    """tiny.yaml with dotted keys changed, written to tmp (relative data paths stay the project's)."""
    data = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp / "recipe.yaml"
    path.write_text("# hostile\n" + yaml.safe_dump(data))
    return path


def data_case(name: str, content: bytes, key: str = "sft.data", extra: dict | None = None):
    """A data file `name` with `content`, named by recipe key `key`; validated with `alignment validate`."""
    def build(tmp: Path) -> list[str]:
        f = tmp / name
        f.write_bytes(content)
        return ["validate", str(recipe_with(tmp, {f"{key}.path": str(f), **(extra or {})}))]
    return build


def recipe_text(text: bytes):
    def build(tmp: Path) -> list[str]:
        f = tmp / "recipe.yaml"
        f.write_bytes(text)
        return ["validate", str(f)]
    return build


def recipe_case(changes: dict):
    return lambda tmp: ["validate", str(recipe_with(tmp, changes))]


def override_case(*params: str):
    return lambda tmp: ["recipe", "tiny", *[x for p in params for x in ("-p", p)]]


def constitution_case(text: str | bytes):
    def build(tmp: Path) -> list[str]:
        f = tmp / "c.yaml"
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["constitution", "validate", str(f)]
    return build


def principle(**fields) -> str:
    p = {"id": "p1", "critique": "Critique {{ response }}.", "revision": "Revise it.", **fields}
    return yaml.safe_dump({"name": "x", "version": "1", "principles": [p]})


def template_case(text: str):
    def build(tmp: Path) -> list[str]:
        import shutil

        d = tmp / "prompts"
        shutil.copytree(ROOT / "prompts", d)
        (d / "judge_pairwise.jinja").write_text(text)
        return ["validate", "tiny"], d  # validate with prompts/ read from `d`
    return build


DEEP = ("[" * 100_000 + "]" * 100_000).encode()
PAIR = {"prompt": "q", "chosen": "a", "rejected": "b"}
CASES = {
    # data files
    "JSONL not UTF-8": (data_case("d.jsonl", b'{"prompt": "caf\xe9", "completion": "x"}\n'), "line 1: not UTF-8 (byte 0xe9"),
    "JSONL invalid JSON": (data_case("d.jsonl", b'{"prompt": "a", "completion": }\n'), "line 1: not valid JSON"),
    "JSONL row is a list": (data_case("d.jsonl", b'[1, 2]\n'), "line 1: expected a JSON object"),
    "JSONL row is a number": (data_case("d.jsonl", b'7\n'), "line 1: expected a JSON object (a row with named fields), got int"),
    "JSONL nested 100,000 deep": (data_case("d.jsonl", DEEP + b"\n"), "JSON nested too deeply"),
    "gzip that is not gzip": (data_case("d.jsonl.gz", jsonl([{"messages": [MSG, ANSWER]}])), "not a readable gzip file"),
    "gzip cut short": (data_case("d.jsonl.gz", gzip.compress(jsonl([{"messages": [MSG, ANSWER]}] * 50))[:40]), "not a readable gzip file"),
    "JSON file: list of numbers": (data_case("d.json", b"[1, 2, 3]"), "row 1: expected a JSON object"),
    "JSON file: an object": (data_case("d.json", b'{"rows": []}'), "expected a JSON list of rows"),
    "JSON file: invalid": (data_case("d.json", b'[{"a": 1},'), "not valid JSON"),
    "JSON file: not UTF-8": (data_case("d.json", b'[{"prompt": "\xff"}]'), "not UTF-8 (byte 0xff"),
    "Parquet that is not Parquet": (data_case("d.parquet", b"PAR1 this is not parquet"), "not a readable Parquet file"),
    "CSV not UTF-8": (data_case("d.csv", b"prompt,completion\n\xe9,x\n"), "not UTF-8"),
    "CSV with broken quoting": (data_case("d.csv", b'prompt,completion\n"a,b\n'), "not a readable CSV file"),
    "empty file": (data_case("d.jsonl", b""), "no rows"),
    "only blank lines": (data_case("d.jsonl", b"\n\n  \n"), "no rows"),
    "unknown role": (data_case("d.jsonl", jsonl([{"messages": [{"role": "wizard", "content": "x"}, ANSWER]}])), "role' is 'wizard'"),
    "content not text": (data_case("d.jsonl", jsonl([{"messages": [{"role": "user", "content": 5}, ANSWER]}])), "content' must be text"),
    "empty messages": (data_case("d.jsonl", jsonl([{"messages": []}])), "must be a non-empty list"),
    "no assistant turn (SFT)": (data_case("d.jsonl", jsonl([{"messages": [MSG]}])), "no assistant turn"),
    "completion missing": (data_case("d.jsonl", jsonl([{"prompt": "a", "completion": "b"}, {"prompt": "a"}])), "line 2: field 'completion' is missing"),
    "unknown row format": (data_case("d.jsonl", jsonl([{"text": "x"}])), "unknown row format (keys: text)"),
    "preference missing 'rejected'": (data_case("p.jsonl", jsonl([PAIR, {"prompt": "q", "chosen": "a"}]), "dpo.data"), "line 2: preference row is missing 'rejected'"),
    "soft label out of range": (data_case("p.jsonl", jsonl([{**PAIR, "soft_label": 1.7}]), "dpo.data"), "field 'soft_label' is 1.7"),
    "chosen text, rejected messages": (data_case("p.jsonl", jsonl([{"prompt": "q", "chosen": "a", "rejected": [ANSWER]}]), "dpo.data"), "both be text or both be message lists"),
    "HH-RLHF text without turns": (data_case("p.jsonl", jsonl([{"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "plain"}]), "dpo.data"), "share no '\\n\\nAssistant:' turn"),
    "mostly identical pairs": (data_case("p.jsonl", jsonl([{**PAIR, "rejected": "a"}] * 3 + [PAIR]), "dpo.data"), "3 of 4 pairs have identical 'chosen' and 'rejected'"),
    "mostly over max_length": (data_case("d.jsonl", jsonl([{"prompt": "x" * 4000, "completion": "y"}] * 3), extra={"sft.train.max_length": 64}), "3 of 3 rows are longer than train.max_length = 64"),
    "data file not found": (recipe_case({"sft.data.path": "data/no-such-file.jsonl"}), "data/no-such-file.jsonl: file not found"),
    # recipes
    "recipe not UTF-8": (recipe_text(b"model:\n  name: caf\xe9\n"), "line 2: not UTF-8 (byte 0xe9)"),
    "recipe invalid YAML": (recipe_text(b"model: [unclosed\n"), "not valid YAML"),
    "recipe is a list": (recipe_text(b"- a\n- b\n"), "expected a mapping of keys at the top level, got list"),
    "recipe key typo": (recipe_case({"dpo.betta": 0.2}), "dpo.betta: unknown key"),
    "recipe wrong type": (recipe_case({"sft.train.batch_size": "eight"}), "sft.train.batch_size = 'eight'"),
    "negative learning rate": (recipe_case({"dpo.train.learning_rate": -1e-5}), "dpo.train.learning_rate = -1e-05: Input should be greater than 0"),
    "enum typo": (recipe_case({"dpo.loss_type": "sigmoidd"}), "dpo.loss_type = 'sigmoidd'"),
    "missing section": (recipe_text(yaml.safe_dump({k: v for k, v in TINY.items() if k != "eval_prompts"}).encode()), "eval_prompts: Field required"),
    "YAML anchors and aliases (billion laughs)": (recipe_text(b'a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\n'), "anchors and aliases (&name, *name) are not accepted"),
    "recipe over 1 MiB": (recipe_text(b"# " + b"x" * (1 << 20) + b"\n"), "a YAML file here may have 1048576 at most"),
    "local model directory missing": (recipe_case({"model.name": "./models/not-there"}), "model.name: local path './models/not-there' does not exist"),
    "launch config missing": (recipe_case({"launch": {"accelerate_config": "alignment/launch_profiles/nope.yaml"}}), "accelerate config 'alignment/launch_profiles/nope.yaml' not found"),
    "FSDP on a CPU": (recipe_case({"sft.launch": {"accelerate_config": "alignment/launch_profiles/fsdp.yaml"}}), "FSDP needs GPUs"),
    "negative temperature": (recipe_case({"generation.temperature": -0.5}), "generation.temperature = -0.5"),
    "too many processes": (recipe_case({"launch": {"num_processes": 0}}), "launch.num_processes = 0"),
    # overrides
    "override unknown key": (override_case("dpo.betta=0.2"), "dpo.betta: unknown key"),
    "override into a value": (override_case("sft.train.learning_rate.x=1"), "'learning_rate' is a value, not a section"),
    "override bad type": (override_case("sft.train.max_steps=lots"), "sft.train.max_steps = 'lots'"),
    "override without '='": (override_case("dpo.beta"), "expected key=value"),
    "override empty key part": (override_case("sft..beta=1"), "is not a dotted key like 'dpo.beta'"),
    # constitutions
    "principle: attribute access": (constitution_case(principle(critique="{{ prompt.__class__ }}")), "found a getattr"),
    "principle: filter": (constitution_case(principle(critique="{{ prompt|upper }}")), "found a filter"),
    "principle: loop": (constitution_case(principle(critique="{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}")), "found a for"),
    "principle: call": (constitution_case(principle(critique="{{ range(10) }}")), "found a call"),
    "principle: unknown variable": (constitution_case(principle(critique="{{ answer }}")), "unknown template variable 'answer'"),
    "principle: broken template": (constitution_case(principle(critique="{{ prompt")), "not a valid template"),
    "principle: critique without revision": (constitution_case(principle(revision=None)), "critique and revision go together"),
    "principle: empty text": (constitution_case(principle(critique="  ")), "text is empty"),
    "principle: bad id": (constitution_case(principle(id="Bad Id!")), "must be lowercase letters"),
    "principle: duplicate id": (constitution_case(yaml.safe_dump({"name": "x", "version": "1", "principles": [
        {"id": "p", "comparison": "Which?"}, {"id": "p", "comparison": "Which one?"}]})), "duplicate principle id"),
    "constitution not UTF-8": (constitution_case(b"name: caf\xe9\n"), "not UTF-8"),
    # prompt templates
    "template without header": (template_case("Which is better? {{ question }}"), "missing the '{# version: ... #}' header"),
    "template syntax error": (template_case("{# version: 1 #}\n{# vars: question, response_a, response_b, criterion #}\n{% if %}"), "TemplateSyntaxError"),
    "template endless loop": (template_case("{# version: 1 #}\n{# vars: question, response_a, response_b, criterion #}\n"
                                            "{% for i in range(10**9) %}x{% endfor %}"), "range of 1000000000 items in a template"),
    "template sandbox escape": (template_case("{# version: 1 #}\n{# vars: question, response_a, response_b, criterion #}\n"
                                              "{{ question.__class__.__mro__ }}"), "SecurityError"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_a_clear_error(name, tmp_path, store, capsys, monkeypatch, request):
    build, expected = CASES[name]
    monkeypatch.chdir(ROOT)
    args = build(tmp_path)
    if isinstance(args, tuple):
        import alignment.prompts as prompts

        args, prompts_dir = args
        monkeypatch.setattr(prompts, "PROMPTS_DIR", prompts_dir)
        prompts.environment.cache_clear()
        request.addfinalizer(prompts.environment.cache_clear)  # the next test gets the real prompts/ again
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    RESULTS[name] = err.strip().removeprefix("error: ")
    assert exit_.value.code == 2, err
    assert expected in err, err
    assert "Traceback" not in err
    assert not store.root.exists() or not any(store.root.rglob("manifest.json")), "nothing written"


def test_a_byte_order_mark_and_crlf_line_endings_are_valid(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rows = (ROOT / "data" / "sft_train.jsonl").read_text().splitlines()[:8]
    data = tmp_path / "windows.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    csv = tmp_path / "windows.csv"
    csv.write_bytes(b"\xef\xbb\xbfprompt,completion\r\nWhat is 2+2?,4\r\n")
    recipe = recipe_with(tmp_path, {"sft.data.path": str(data), "eval_prompts.path": str(csv)})
    recipe.write_bytes(b"\xef\xbb\xbf" + recipe.read_bytes().replace(b"\n", b"\r\n"))
    cli.main(["validate", str(recipe)])
    assert "ok  " + str(recipe) in capsys.readouterr().out


def test_the_catalogue_is_long_enough_and_is_written_out():
    assert len(CASES) >= 50
    if len(RESULTS) == len(CASES):
        out = ROOT / "test-output"
        out.mkdir(exist_ok=True)
        lines = ["| hostile input | message (exit code 2) |", "|---|---|"]
        lines += [f"| {k} | {v.splitlines()[0][:300].replace('|', '/')} |" for k, v in RESULTS.items()]
        (out / "hostile-inputs.md").write_text("\n".join(lines) + "\n")
