"""The chat template: a conversation as token ids, with role markers and an end-of-turn token.

    <|system|>text<|end|><|user|>question<|end|><|assistant|>answer<|end|>...

The four markers are special tokens appended after the pretrained vocabulary of any tokenizer kind
(tokenizers/special.py), so the base model's ids never change. A prompt for generation ends with
<|assistant|>; the model answers and ends its turn with <|end|>. Training counts only what the
assistant says (its text and its <|end|>): the loss mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

from gptlab.errors import ContextTooLong, GptlabError
from gptlab.tokenizers import Tokenizer
from gptlab.tokenizers.special import WithSpecialTokens

ROLES = ("system", "user", "assistant")
END = "<|end|>"
MARKERS = {role: f"<|{role}|>" for role in ROLES}
CHAT_TOKENS = (*MARKERS.values(), END)


@dataclass
class Message:
    """One turn of a conversation."""

    role: str
    content: str


def add_chat_tokens(tokenizer: Tokenizer) -> WithSpecialTokens:
    """tokenizer with the chat markers appended after its vocabulary (as it is if it has them)."""
    if has_chat_tokens(tokenizer):
        return tokenizer
    return WithSpecialTokens(tokenizer, CHAT_TOKENS)


def has_chat_tokens(tokenizer: Tokenizer) -> TypeGuard[WithSpecialTokens]:
    """Whether this tokenizer carries the chat template's markers (a fine-tuned run's does)."""
    return isinstance(tokenizer, WithSpecialTokens) and all(t in tokenizer.added for t in CHAT_TOKENS)


class ChatTemplate:
    """Conversations to ids and back for one tokenizer with the chat markers."""

    def __init__(self, tokenizer: Tokenizer):
        if not has_chat_tokens(tokenizer):
            raise GptlabError(
                "this model has no chat template (it is a base model); fine-tune it first "
                "with `gptlab finetune --from RUN --data FILE --out RUN2`"
            )
        self.tokenizer = tokenizer
        self.end_id = self.tokenizer.token_id(END)
        self.role_ids = {role: self.tokenizer.token_id(m) for role, m in MARKERS.items()}
        self._roles_by_id = {i: r for r, i in self.role_ids.items()}

    def encode(self, messages: list[Message], generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
        """Ids of the conversation, and for each id whether the model is trained to write it (the
        assistant's text and end-of-turn). generation_prompt: end with the assistant's marker."""
        ids: list[int] = []
        trained: list[bool] = []
        for m in messages:
            if m.role not in self.role_ids:
                raise GptlabError(f"unknown role {m.role!r} (known: {', '.join(ROLES)})")
            body = self.tokenizer.encode(m.content)
            answer = m.role == "assistant"
            ids += [self.role_ids[m.role], *body, self.end_id]
            trained += [False] + [answer] * (len(body) + 1)
        if generation_prompt:
            ids.append(self.role_ids["assistant"])
            trained.append(False)
        return ids, trained

    def prompt(self, messages: list[Message]) -> list[int]:
        """Ids that ask the model for the assistant's next turn."""
        return self.encode(messages, generation_prompt=True)[0]

    def decode(self, ids: list[int]) -> list[Message]:
        """The conversation in ids (inverse of encode; an unfinished last turn is kept as it is)."""
        messages: list[Message] = []
        role: str | None = None
        body: list[int] = []
        for i in ids:
            if i in self._roles_by_id:
                role, body = self._roles_by_id[i], []
            elif i == self.end_id:
                if role is None:
                    raise GptlabError("end-of-turn without a role marker before it")
                messages.append(Message(role, self.tokenizer.decode(body)))
                role, body = None, []
            elif role is None:
                raise GptlabError("text outside a turn (no role marker before it)")
            else:
                body.append(i)
        if role is not None:
            messages.append(Message(role, self.tokenizer.decode(body)))
        return messages

    def prompt_within(self, messages: list[Message], budget: int) -> tuple[list[int], int]:
        """The generation prompt of the latest turns that fit in budget tokens: the oldest turns
        after a leading system message are dropped first. Returns the ids and how many messages were
        dropped; refuses when even the last message alone does not fit."""
        system = messages[:1] if messages and messages[0].role == "system" else []
        rest = messages[len(system) :]
        # Each message is encoded once, newest first, until the budget is spent: the work is linear in
        # what is kept, however many older messages are dropped.
        ids = self.encode(system)[0]
        turns: list[list[int]] = []
        used = len(ids) + 1  # the assistant's marker that asks for the answer
        for m in reversed(rest):
            turn = self.encode([m])[0]
            if used + len(turn) > budget:
                break
            turns.append(turn)
            used += len(turn)
        if not turns:
            raise ContextTooLong(f"the last message does not fit in the model's context ({budget} tokens)")
        for turn in reversed(turns):
            ids += turn
        return ids + [self.role_ids["assistant"]], len(rest) - len(turns)
