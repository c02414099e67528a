"""Ids to text as they are generated: hold back partial characters and possible stop strings."""

from __future__ import annotations

from collections.abc import Sequence

from gptlab.tokenizers import Tokenizer


class StreamDecoder:
    """Turns ids into text as they arrive, holding back ids that end in a partial character
    (byte-level tokenizers can split one character across tokens)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now complete (maybe empty)."""
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 8:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        """Whatever is still held back."""
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


class TextStream:
    """The text of one generated sequence, piece by piece, cut before the first stop string.

    Text that could be the start of a stop string is held back until the next pieces show whether
    it is one, so a stop string never leaks out half-printed.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.held = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one id; return (text now safe to show, whether a stop string was reached)."""
        return self._release(self.held + self.decoder.push(token_id), final=False)

    def finish(self) -> tuple[str, bool]:
        """The sequence ended: everything still held back, and whether it held a stop string."""
        return self._release(self.held + self.decoder.flush(), final=True)

    def _release(self, text: str, final: bool) -> tuple[str, bool]:
        hits = [text.find(s) for s in self.stop if s in text]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = 0 if final else max((n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep], False
