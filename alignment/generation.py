"""Responses to held-out prompts with transformers ``generate`` (batched, left padding, seeded).

This is the `hf` engine; chat formatting goes through ``tokenizer.apply_chat_template``.
"""

import json
from pathlib import Path
from typing import Any

from alignment.config import GenerationSpec


def generate(model, tokenizer, chats: list[list[dict[str, str]]], spec: GenerationSpec) -> list[str]:
    import torch

    torch.manual_seed(spec.seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row ends at its prompt
    model.eval()
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        for i in range(0, len(chats), spec.batch_size):
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                     for c in chats[i : i + spec.batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            sample = spec.temperature > 0
            with torch.no_grad():
                out = model.generate(
                    **batch, max_new_tokens=spec.max_new_tokens, do_sample=sample,
                    temperature=spec.temperature if sample else None, top_p=spec.top_p if sample else None,
                    top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, batch["input_ids"].shape[1]:]
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return outputs


def answer_prompts(model, tokenizer, prompts: list[dict[str, Any]], spec: GenerationSpec, out: Path) -> Path:
    """Write ``samples.jsonl``: one row per prompt with the prompt and the model's response."""
    chats = [p["prompt"] for p in prompts]
    responses = generate(model, tokenizer, chats, spec)
    path = out / "samples.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for chat, resp in zip(chats, responses, strict=True):
            f.write(json.dumps({"prompt": chat, "response": resp}, ensure_ascii=False) + "\n")
    return path


def read_samples(artifact_path: str | Path) -> list[dict[str, Any]]:
    path = Path(artifact_path) / "samples.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
