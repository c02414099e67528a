"""Ids to text as they are generated: hold back partial characters and possible stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

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


class StopMatcher:
    """Where one stop string occurs in a stream of text, read one character at a time (Knuth–Morris–Pratt):
    `matched` is the longest prefix of the stop string that the text read so far ends with. Each character
    costs O(1) amortised, so a long stop string costs its length once, never its length per token."""

    def __init__(self, stop: str):
        self.stop = stop
        self.fail = _fallbacks(stop)
        self.matched = 0

    def feed(self, char: str) -> bool:
        """Read one character; whether the text now ends with the whole stop string."""
        k = self.matched
        if k == len(self.stop):
            k = self.fail[k]
        while k and char != self.stop[k]:
            k = self.fail[k]
        k += char == self.stop[k]
        self.matched = k
        return k == len(self.stop)


@lru_cache(maxsize=64)  # a request's sequences share their stop strings: built once, not once per sequence
def _fallbacks(stop: str) -> tuple[int, ...]:
    """fail[n]: the longest proper prefix of stop[:n] that is also its suffix (where a matcher falls back to)."""
    fail = [0] * (len(stop) + 1)
    k = 0
    for n in range(1, len(stop)):
        while k and stop[n] != stop[k]:
            k = fail[k]
        k += stop[n] == stop[k]
        fail[n + 1] = k
    return tuple(fail)


class TextStream:
    """The text of one generated sequence, piece by piece, cut before the first stop string.

    Text that could be the start of a stop string is held back until the next pieces show whether
    it is one, so a stop string never leaks out half-printed. Each new character is read once by each
    stop string's matcher: the work per token is its text's length, whatever the stop strings' lengths.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.matchers = [StopMatcher(s) for s in stop if s]
        self.held = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one id; return (text now safe to show, whether a stop string was reached)."""
        return self._release(self.decoder.push(token_id), final=False)

    def finish(self) -> tuple[str, bool]:
        """The sequence ended: everything still held back, and whether it held a stop string."""
        return self._release(self.decoder.flush(), final=True)

    def _release(self, new: str, final: bool) -> tuple[str, bool]:
        text = self.held + new
        # Where each stop string first completes within the new text: the earliest start wins.
        starts = []
        for m in self.matchers:
            for end, char in enumerate(new, len(self.held) + 1):
                if m.feed(char):
                    starts.append(end - len(m.stop))
                    break
        if starts:
            self.held = ""
            return text[: min(starts)], True
        # Hold back the longest tail that may still grow into a stop string (every matcher has read it all).
        keep = 0 if final else min(len(text), max((m.matched for m in self.matchers), default=0))
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep], False
