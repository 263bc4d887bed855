"""The one generation interface: rollouts, revisions and judge outputs all go through an ``Engine``.

- ``generate(chats, spec, logprobs=False)`` → one ``Completion`` per chat (text, token ids, and on
  request the log-probability of each generated token). Chats are formatted with the model's chat
  template; the same seed gives the same outputs within an engine.
- ``score(chats, options)`` → for each chat, the summed log-probability of each option continuation
  right after the assistant turn starts (``log P(option | chat)``): what multiple-choice judges need.
"""

from dataclasses import dataclass, field
from typing import Protocol

from alignment.config import GenerationSpec

Chat = list[dict[str, str]]


@dataclass
class Completion:
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None  # one per generated token, when asked for

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


class Engine(Protocol):
    name: str

    def generate(self, chats: list[Chat], spec: GenerationSpec, logprobs: bool = False) -> list[Completion]: ...

    def score(self, chats: list[Chat], options: list[list[str]]) -> list[list[float]]: ...

    def close(self) -> None: ...


def prompt_ids(tokenizer, chat: Chat) -> list[int]:
    """Token ids of `chat` with the assistant turn opened (the generation prompt)."""
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def option_ids(tokenizer, option: str) -> list[int]:
    ids = tokenizer(option, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"option {option!r} tokenises to nothing; options must be non-empty text")
    return ids
