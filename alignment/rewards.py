"""Scalar rewards from a reward model: a sequence classifier with one output (what TRL's
``RewardTrainer`` trains), applied to the chat-formatted prompt + response."""

from alignment.config import ModelSpec
from alignment.generation.base import Chat


def score_responses(model_spec: ModelSpec, chats: list[Chat], responses: list[str], batch_size: int = 16) -> list[float]:
    import torch
    from transformers import AutoModelForSequenceClassification

    from alignment.models import load_tokenizer, resolve_model_path, torch_dtype

    tok = load_tokenizer(model_spec)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(model_spec), dtype=torch_dtype(model_spec), use_safetensors=True,
        trust_remote_code=model_spec.trust_remote_code)
    if model.config.num_labels != 1:
        raise ValueError(f"evaluate.reward_model: {model_spec.name!r} has {model.config.num_labels} outputs; "
                         "a reward model has exactly one (num_labels=1)")
    model.config.pad_token_id = tok.pad_token_id
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    texts = [tok.apply_chat_template(c + [{"role": "assistant", "content": r}], tokenize=False)
             for c, r in zip(chats, responses, strict=True)]
    out: list[float] = []
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        for i in range(0, len(texts), batch_size):
            batch = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=1024, add_special_tokens=False).to(device)
            with torch.no_grad():
                out += model(**batch).logits[:, 0].float().tolist()
    finally:
        tok.padding_side = side
    return out
