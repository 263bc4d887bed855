import gzip
import json

import pandas as pd
import pytest
from refusals import note

from alignment.config import DataFormat, DataSpec
from alignment.data import DataError, detect_format, load_data, parse_hh_text


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_shipped_sample_data_validates():
    assert len(load_data(DataSpec(path="data/sft_train.jsonl"), "sft").rows) >= 150
    prefs = load_data(DataSpec(path="data/pref_train.jsonl"), "preference")
    held = load_data(DataSpec(path="data/pref_heldout.jsonl"), "preference")
    assert len(prefs.rows) >= 150 and len(held.rows) >= 40
    train_prompts = {r["prompt"][-1]["content"].lower() for r in prefs.rows}
    assert not train_prompts & {r["prompt"][-1]["content"].lower() for r in held.rows}, "held-out pairs leak"
    assert len(load_data(DataSpec(path="data/eval_prompts.jsonl"), "prompts").rows) >= 10


@pytest.mark.parametrize("row,fmt", [
    ({"messages": [{"role": "user", "content": "a"}]}, DataFormat.messages),
    ({"prompt": "a", "completion": "b"}, DataFormat.prompt_completion),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, DataFormat.preference),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}, DataFormat.hh_rlhf),
    ({"prompt": [{"role": "user", "content": "a"}]}, DataFormat.prompt_only),
])
def test_detect_format(row, fmt):
    assert detect_format(row) is fmt


def test_implicit_prompt_preference_is_split(tmp_path):
    u, a, b = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "assistant", "content": "go away"})
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": [u, a], "rejected": [u, b]}])
    row = load_data(DataSpec(path=path), "preference").rows[0]
    assert row == {"prompt": [u], "chosen": [a], "rejected": [b]}


def test_csv_and_parquet_prompt_completion(tmp_path):
    df = pd.DataFrame({"prompt": ["2+2?", "capital of France?"], "completion": ["4", "Paris"]})
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        rows = load_data(DataSpec(path=str(tmp_path / name)), "sft").rows
        assert rows[1] == {"prompt": "capital of France?", "completion": "Paris"}


def test_hh_text_parses_turns():
    turns = parse_hh_text("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: bye", "x", "chosen")
    assert turns == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": "bye"}]


def test_real_hh_rlhf_file(hh_rlhf):
    data = load_data(DataSpec(path=str(hh_rlhf)), "preference")
    assert data.format is DataFormat.hh_rlhf and len(data.rows) == 2312
    for row in data.rows:
        assert row["prompt"][-1]["role"] == "user"
        assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
    # Line 1255: the chosen answer itself contains "\n\nAssistant:"; the prompt must still be the shared part.
    row = data.rows[1254]
    with gzip.open(hh_rlhf, "rt") as f:
        raw = [json.loads(x) for _, x in zip(range(1255), f, strict=False)][-1]
    assert raw["chosen"].startswith("\n\nHuman:") and "Assistant:" in row["chosen"][0]["content"]
    assert row["prompt"][-1]["content"] == "Isn't that drag kings?"
    assert load_data(DataSpec(path=str(hh_rlhf), max_rows=10), "preference").rows == data.rows[:10]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: not valid JSON"):
        load_data(DataSpec(path=str(path)), "preference")


def test_preference_row_without_rejected(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                              {"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataError, match=r"p\.jsonl line 2: preference row is missing 'rejected' \(keys present: "
                                        r"chosen, prompt\); expected 'chosen' and 'rejected'"):
        load_data(DataSpec(path=path), "preference")


def test_sft_rows_given_to_preference_stage(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                             {"role": "assistant", "content": "b"}]}])
    with pytest.raises(DataError, match=r"line 1: preference row is missing 'chosen'"):
        load_data(DataSpec(path=path), "preference")


@pytest.mark.parametrize("row,match", [
    ({"messages": [{"role": "robot", "content": "a"}]}, r"messages\[0\]\.role' is 'robot'; expected one of"),
    ({"messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
    ({"messages": [{"role": "user"}]}, r"messages\[0\]' must be an object with 'role' and 'content'"),
    ({"messages": "hello"}, "must be a non-empty list"),
    ({"text": "hello"}, "unknown row format"),
])
def test_bad_sft_rows(tmp_path, row, match):
    path = write_jsonl(tmp_path / "s.jsonl", [row])
    with pytest.raises(DataError, match=match):
        load_data(DataSpec(path=path), "sft")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_data(DataSpec(path=str(tmp_path / "nope.jsonl")), "sft")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_data(DataSpec(path=str(tmp_path / "empty.jsonl")), "sft")


def test_a_gzip_bomb_is_refused_before_it_is_in_memory(tmp_path):
    """100 MiB of newlines gzip to about 100 KB (a 1000× expansion): refused while decompressing, naming
    the file and the fix; a real data set's ratio (HH-RLHF: 4.4×) is far below the limit."""
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:  # written in blocks: the test holds no 100 MiB either
        for _ in range(100):
            f.write(b"\n" * (1 << 20))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(DataError, match="bomb.jsonl.gz: expands past .* bytes from") as e:
        load_data(DataSpec(path=str(bomb)), "preference")
    note("7", "a .jsonl.gz of about 100 KB that expands to 100 MiB", str(e.value))


def test_a_hub_data_set_whose_card_names_local_files_is_refused(tmp_path, monkeypatch):
    """A data set card may list `data_files` by absolute path, and `datasets` resolves them on this machine:
    a hub id would read a local file. The repository is a local copy of such a card (no hub here), handed
    to `datasets` exactly as the hub's would be; without the check it reads the secret."""
    import datasets

    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"prompt": "the machine owner\'s private file"}\n')
    repo = tmp_path / "someone--data"
    repo.mkdir()
    (repo / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    f"    path: {secret}\n---\n")
    real = datasets.load_dataset_builder
    assert datasets.load_dataset(str(repo), split="train")[0]["prompt"].startswith("the machine owner"), "the attack"
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda path, name=None, **kw: real(str(repo), name, **kw))
    with pytest.raises(DataError, match=f"hub data set 'someone/data': its card names files outside the hub .*{secret}") as e:
        load_data(DataSpec(path="someone/data"), "prompt")

    note("6", "a hub data set whose card lists an absolute data_files path", str(e.value))
