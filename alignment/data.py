"""Load, recognise and validate data sets before any model is touched.

Accepted: local JSONL (also ``.jsonl.gz``), JSON, Parquet and CSV files, and Hugging Face hub data sets;
TRL's standard formats (conversational ``messages``, ``prompt``/``completion``, preference
``prompt``/``chosen``/``rejected`` with explicit or implicit prompt) and the HH-RLHF text form
(``"\\n\\nHuman: … \\n\\nAssistant: …"``), which is converted to conversational turns. Every row is checked;
an error names the file, the line (or row), the field and what was expected.
"""

import gzip
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignment.artifacts import sha256_file
from alignment.config import DataFormat, DataSpec

Kind = Literal["sft", "preference", "prompts"]
ROLES = {"system", "user", "assistant", "tool"}
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
HH_ASSISTANT = "\n\nAssistant:"
FORMATS_FOR: dict[Kind, tuple[DataFormat, ...]] = {
    "sft": (DataFormat.messages, DataFormat.prompt_completion),
    "preference": (DataFormat.preference, DataFormat.hh_rlhf),
    "prompts": (DataFormat.prompt_only, DataFormat.messages, DataFormat.prompt_completion, DataFormat.preference),
}
EXPECTED = {
    "sft": "'messages' (a list of {role, content}) or 'prompt' + 'completion'",
    "preference": "'chosen' and 'rejected' (with 'prompt', or HH-RLHF 'Human:/Assistant:' text)",
    "prompts": "'prompt' (text or a list of {role, content}) or 'messages'",
}


class DataError(ValueError):
    """A data problem, located: ``<source> <line/row N>: <field>: <problem>; expected <what>``."""


@dataclass
class LoadedData:
    rows: list[dict[str, Any]]
    format: DataFormat
    source: str
    identity: dict[str, Any]  # what the artifact key hashes: content hash for files, id/split for hub sets
    dropped_identical: int = 0  # preference pairs whose two answers were the same (dropped)

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_list(self.rows)


def is_local(spec: DataSpec) -> bool:
    return Path(spec.path).exists() or spec.path.endswith(LOCAL_SUFFIXES) or spec.path.startswith((".", "/"))


def data_identity(spec: DataSpec) -> dict[str, Any]:
    """Cheap identity for cache keys: the file's sha256, or the hub id with split/subset."""
    base = {"format": spec.format.value, "max_rows": spec.max_rows}
    if is_local(spec):
        path = Path(spec.path)
        if not path.is_file():
            raise DataError(f"{spec.path}: file not found (resolved to {path.resolve()}); fix the data path")
        return {**base, "sha256": sha256_file(path)}
    return {**base, "hub": spec.path, "split": spec.split, "subset": spec.subset}


MAX_BYTES = 2 << 30  # a local data file larger than 2 GiB is refused (use a hub data set or split it)
# A .gz that expands past 16 MiB by more than 100× is a decompression bomb, not data (JSONL text compresses
# 4-15×: HH-RLHF's harmless-base test split is 4.4×), and nothing decompresses past MAX_BYTES either; both
# are checked while decompressing, so a bomb costs at most that much memory
GZ_RATIO, GZ_RATIO_FROM = 100, 16 << 20
CHARS_PER_TOKEN = 4  # estimate of row length in tokens, before any tokenizer is loaded
REFUSE_SHARE = 0.5  # more than half the rows unusable (identical pairs, over max_length): refused


def _decode(raw: bytes, path: Path) -> str:
    """UTF-8, with or without a byte-order mark (what many Windows editors write); else a located error."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "save the file as UTF-8") from None


def _json(text: str, where: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno}); expected {expected}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply to be a data row; expected {expected}") from None


def _gunzip(raw: bytes, path: Path) -> bytes:
    """The decompressed bytes, refusing a bomb (see GZ_RATIO) before it is all in memory."""
    import zlib

    limit = min(MAX_BYTES, max(GZ_RATIO_FROM, GZ_RATIO * len(raw)))
    out, size = [], 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            while block := f.read(1 << 20):
                size += len(block)
                if size > limit:
                    raise DataError(f"{path}: expands past {limit} bytes from {len(raw)} (more than {GZ_RATIO}× "
                                    f"beyond {GZ_RATIO_FROM >> 20} MiB, or past {MAX_BYTES >> 30} GiB): not a data "
                                    "file; decompress it yourself and check it, then pass the .jsonl")
                out.append(block)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); gzip it again, or name it .jsonl if it "
                        "is plain text") from None
    return b"".join(out)


def _read_local(path: Path) -> list[tuple[str, Any]]:
    """(location, row) pairs; locations are `line N` for JSONL and CSV and `row N` (1-based) otherwise.
    Damaged files (not UTF-8, not gzip, not Parquet, not CSV) are located errors, never tracebacks."""
    name = path.name
    if path.stat().st_size > MAX_BYTES:
        raise DataError(f"{path}: {path.stat().st_size} bytes is more than a local data file may have "
                        f"({MAX_BYTES}); split it or use a hub data set")
    if name.endswith((".jsonl", ".jsonl.gz")):
        raw = path.read_bytes()
        if name.endswith(".gz"):
            raw = _gunzip(raw, path)
        out = []
        for n, line in enumerate(_decode(raw, path).splitlines(), 1):
            if line.strip():
                out.append((f"line {n}", _json(line, f"{path} line {n}", "one JSON object per line")))
        return out
    if name.endswith(".json"):
        data = _json(_decode(path.read_bytes(), path), str(path), "a JSON list of rows")
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows (or {{'data': [...]}}), got {type(data).__name__}")
        return [(f"row {i}", r) for i, r in enumerate(data, 1)]
    import pandas as pd

    try:
        df = (pd.read_parquet(path) if name.endswith(".parquet")  # CSV cells are text: "4" stays "4"
              else pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False))
    except UnicodeDecodeError:
        _decode(path.read_bytes(), path)  # raises with the line
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow and pandas raise many types for a damaged file
        kind = "Parquet" if name.endswith(".parquet") else "CSV"
        raise DataError(f"{path}: not a readable {kind} file ({type(e).__name__}: {str(e)[:200]}); "
                        f"write it again as {kind}") from None
    first = 2 if name.endswith(".csv") else 1  # CSV: line 1 is the header
    return [(f"{'line' if first == 2 else 'row'} {i + first}", r) for i, r in enumerate(df.to_dict("records"))]


def read_local_rows(spec: DataSpec) -> list[tuple[str, Any]]:
    """(location, row) pairs of a local file as written (no format checks; ``max_rows`` applied): for
    files whose rows are not one of the training formats, e.g. benchmark tasks."""
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"{spec.path}: file not found (resolved to {path.resolve()}); fix the data path")
    rows = _read_local(path)
    return rows[: spec.max_rows] if spec.max_rows else rows


HUB_FILES = ("hf://", "https://huggingface.co/", "https://hf.co/")


def _read_hub(spec: DataSpec) -> list[tuple[str, dict]]:
    from datasets import load_dataset_builder

    # A hub data set's card can list `data_files` by absolute path, which `datasets` resolves on *this*
    # machine: a hub id would then read local files. Every file must come from the hub.
    builder = load_dataset_builder(spec.path, spec.subset)
    local = sorted({str(f) for files in (builder.config.data_files or {}).values() for f in files
                    if not str(f).startswith(HUB_FILES)})
    if local:
        raise DataError(f"hub data set {spec.path!r}: its card names files outside the hub ({', '.join(local[:3])}); "
                        "a hub data set may only read its own files. Download what you want and pass a local file")
    builder.download_and_prepare()  # the same builder, so the same files: the card is not read twice
    ds = builder.as_dataset(split=spec.split)
    return [(f"row {i}", r) for i, r in enumerate(ds, 1)]


def detect_format(row: dict[str, Any]) -> DataFormat:
    keys = set(row)
    if "chosen" in keys or "rejected" in keys:
        c = row.get("chosen")
        if isinstance(c, str) and "prompt" not in keys and HH_TURN.search(c):
            return DataFormat.hh_rlhf
        return DataFormat.preference
    if "messages" in keys:
        return DataFormat.messages
    if "completion" in keys:
        return DataFormat.prompt_completion
    if "prompt" in keys:
        return DataFormat.prompt_only
    return DataFormat.auto


def _messages(value: Any, field: str, where: str, *, allow_text: bool = False) -> list[dict[str, str]] | str:
    if allow_text and isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field '{field}' is empty; expected non-empty text")
        return value
    if not isinstance(value, list) or not value:
        got = type(value).__name__ if value is not None else "nothing"
        raise DataError(f"{where}: field '{field}' must be a non-empty list of {{role, content}} messages"
                        f"{' or text' if allow_text else ''}, got {got}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: field '{field}[{i}]' must be an object with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: field '{field}[{i}].role' is {m['role']!r}; expected one of {sorted(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: field '{field}[{i}].content' must be text, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def parse_hh_text(text: str, where: str, field: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` → ``[{user: a}, {assistant: b}]``."""
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(f"{where}: field '{field}' is not HH-RLHF text; expected it to start with "
                        f"'\\n\\nHuman:' and alternate Human/Assistant turns, got {text[:60]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def _hh_row(row: dict, where: str) -> dict[str, Any]:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    for f, v in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(v, str):
            raise DataError(f"{where}: field '{f}' is missing or not text; expected HH-RLHF text in 'chosen' and 'rejected'")
    # The prompt is the shared prefix up to its last "\n\nAssistant:"; responses may themselves contain
    # "Assistant:" (5 of the 2,312 harmless-base test rows do), so split on the common prefix, not on turns.
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, n)
    if cut < 0:
        raise DataError(f"{where}: fields 'chosen'/'rejected' share no '\\n\\nAssistant:' turn; expected both "
                        "to continue the same HH-RLHF conversation")
    head = cut + len(HH_ASSISTANT)
    prompt = parse_hh_text(chosen[:cut], where, "chosen")
    if prompt[-1]["role"] != "user":
        raise DataError(f"{where}: the shared conversation must end with a Human turn before the answers")
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen[head:].strip()}],
        "rejected": [{"role": "assistant", "content": rejected[head:].strip()}],
    }


def _split_implicit(chosen: list, rejected: list) -> tuple[list, list, list]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def _preference_row(row: dict, where: str) -> dict[str, Any]:
    missing = [f for f in ("chosen", "rejected") if f not in row or row[f] is None]
    if missing:
        raise DataError(f"{where}: preference row is missing '{missing[0]}' (keys present: "
                        f"{', '.join(sorted(row)) or 'none'}); expected {EXPECTED['preference']}")
    chosen = _messages(row["chosen"], "chosen", where, allow_text=True)
    rejected = _messages(row["rejected"], "rejected", where, allow_text=True)
    if type(chosen) is not type(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be text or both be message lists")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _messages(row["prompt"], "prompt", where, allow_text=True)
        if isinstance(prompt, str) != isinstance(chosen, str):
            raise DataError(f"{where}: 'prompt' and 'chosen' must both be text or both be message lists")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_soft_label(row, where)}
    if isinstance(chosen, str):
        raise DataError(f"{where}: text preference rows need a 'prompt' field (or use HH-RLHF text)")
    prompt, c, r = _split_implicit(chosen, rejected)
    if not prompt:
        raise DataError(f"{where}: implicit-prompt row: 'chosen' and 'rejected' share no leading turns; "
                        "add a 'prompt' field")
    return {"prompt": prompt, "chosen": c, "rejected": r, **_soft_label(row, where)}


def _soft_label(row: dict, where: str) -> dict[str, float]:
    """The optional ``soft_label`` (P(chosen is better)) that AI-feedback rows carry, checked."""
    if row.get("soft_label") is None:
        return {}
    v = row["soft_label"]
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise DataError(f"{where}: field 'soft_label' is {v!r}; expected a number in [0, 1] "
                        "(the probability that 'chosen' is better) or no such field")
    return {"soft_label": float(v)}


def _normalise(row: Any, fmt: DataFormat, kind: Kind, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if fmt is DataFormat.hh_rlhf:
        out = _hh_row(row, where)
    elif fmt is DataFormat.preference:
        out = _preference_row(row, where)
    elif fmt is DataFormat.messages:
        msgs = _messages(row.get("messages"), "messages", where)
        if kind == "sft" and not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: field 'messages' has no assistant turn to learn from")
        out = {"messages": msgs}
    elif fmt is DataFormat.prompt_completion:
        for f in ("prompt", "completion"):
            if f not in row:
                raise DataError(f"{where}: field '{f}' is missing; expected {EXPECTED['sft']}")
        out = {"prompt": _messages(row["prompt"], "prompt", where, allow_text=True),
               "completion": _messages(row["completion"], "completion", where, allow_text=True)}
    elif fmt is DataFormat.prompt_only:
        if "prompt" not in row:
            raise DataError(f"{where}: field 'prompt' is missing; expected {EXPECTED['prompts']}")
        out = {"prompt": _messages(row["prompt"], "prompt", where, allow_text=True)}
    else:
        raise DataError(f"{where}: unknown row format (keys: {', '.join(sorted(row))}); expected {EXPECTED[kind]}")
    if kind == "prompts":
        prompt = out.get("prompt") or _before_last_answer(out["messages"])
        return {"prompt": [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt}
    return out


def _before_last_answer(msgs: list[dict[str, str]]) -> list[dict[str, str]]:
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    return msgs[:last] or msgs


def load_data(spec: DataSpec, kind: Kind) -> LoadedData:
    """Read and validate every row of `spec` as `kind` data; raise DataError at the first bad row."""
    local = is_local(spec)
    identity = data_identity(spec)
    source = str(Path(spec.path)) if local else f"hub:{spec.path}[{spec.split}]"
    raw = _read_local(Path(spec.path)) if local else _read_hub(spec)
    if not raw:
        raise DataError(f"{source}: no rows; expected {EXPECTED[kind]}")
    bad = next(((loc, r) for loc, r in raw if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{source} {bad[0]}: expected a JSON object (a row with named fields), got "
                        f"{type(bad[1]).__name__} {json.dumps(bad[1], default=str)[:60]}; expected {EXPECTED[kind]}")
    fmt = spec.format if spec.format is not DataFormat.auto else detect_format(raw[0][1])
    if kind == "preference" and fmt not in FORMATS_FOR[kind] and isinstance(raw[0][1], dict):
        fmt = DataFormat.preference  # names the missing 'chosen'/'rejected' field in the error below
    if fmt not in FORMATS_FOR[kind]:
        keys = ", ".join(sorted(raw[0][1])) if isinstance(raw[0][1], dict) else type(raw[0][1]).__name__
        looks = "unknown row format" if fmt is DataFormat.auto else f"rows look like '{fmt.value}'"
        raise DataError(f"{source} {raw[0][0]}: {looks} (keys: {keys}), which a {kind} stage cannot use; "
                        f"expected {EXPECTED[kind]}")
    rows = [_normalise(r, fmt, kind, f"{source} {loc}") for loc, r in raw]
    if spec.max_rows:
        rows = rows[: spec.max_rows]
    identical = 0
    if kind == "preference":  # a pair whose answers are the same teaches nothing: dropped, counted
        kept = [r for r in rows if _text_of(r["chosen"]).strip() != _text_of(r["rejected"]).strip()]
        identical = len(rows) - len(kept)
        if identical > REFUSE_SHARE * len(rows):
            raise DataError(f"{source}: {identical} of {len(rows)} pairs have identical 'chosen' and 'rejected' "
                            "answers; a preference needs two different answers. Fix the file")
        rows = kept
    return LoadedData(rows=rows, format=fmt, source=source, identity=identity, dropped_identical=identical)


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def estimated_tokens(row: dict[str, Any]) -> int:
    """A row's length in tokens, estimated from characters (no tokenizer is loaded to validate)."""
    parts = [row.get(k) for k in ("messages", "prompt", "completion", "chosen")]
    return sum(len(_text_of(p)) for p in parts if p) // CHARS_PER_TOKEN


def check_lengths(data: "LoadedData", max_length: int, where: str) -> int:
    """How many rows exceed `max_length` tokens (estimated); refused when that is more than half of them."""
    over = sum(estimated_tokens(r) > max_length for r in data.rows)
    if over > REFUSE_SHARE * len(data.rows):
        raise DataError(f"{data.source}: {over} of {len(data.rows)} rows are longer than {where} = {max_length} "
                        f"tokens (estimated at {CHARS_PER_TOKEN} characters a token) and would be truncated or "
                        f"dropped; raise {where} or shorten the rows")
    return over


def prompt_texts(rows: list[dict[str, Any]]) -> list[str]:
    """The last user message of each row's prompt: a short label for tables."""
    out = []
    for r in rows:
        p = r["prompt"]
        out.append(p if isinstance(p, str) else next((m["content"] for m in reversed(p) if m["role"] == "user"), ""))
    return out
