"""Generation token by token, with a sliding context window, and streaming text decoding."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import torch

from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.inference.sampling import sample_next
from gptlab.runs import load_run
from gptlab.tokenizers import Tokenizer


@torch.no_grad()
def generate(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None
             ) -> Iterator[torch.Tensor]:
    """Yield (B, 1) new ids one step at a time, continuing ids (B, T0).

    When the context grows past block_size the window slides: only the last block_size tokens
    are fed, so the oldest ones drop out of view.
    """
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(ids[:, -block_size:])
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        ids = torch.cat([ids, nxt], dim=1)
        yield nxt


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


def complete(model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None
             ) -> Iterator[str]:
    """Stream the continuation of one prompt as text pieces."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt)
    if not ids:
        # An empty prompt still needs one token of context: start from a document boundary.
        ids = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    x = torch.tensor([ids], dtype=torch.long, device=device)
    decoder = StreamDecoder(tokenizer)
    for nxt in generate(model, x, max_new_tokens, temperature, top_k, top_p, generator):
        piece = decoder.push(int(nxt[0, 0]))
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    """Refuse sampling settings that make no sense, naming the bad one."""
    if max_new_tokens < 0:
        raise GptlabError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0 or not math.isfinite(temperature):
        raise GptlabError(f"temperature={temperature} must be >= 0 (0 is greedy)")
    if top_k < 0:
        raise GptlabError(f"top_k={top_k} must be >= 0 (0 disables it)")
    if not 0 < top_p <= 1:
        raise GptlabError(f"top_p={top_p} must be in (0, 1]")


def print_samples(run: str, prompt: str, num_samples: int = 1, max_new_tokens: int = 500,
                  temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                  device: str = "auto") -> None:
    """`gptlab sample`: stream num_samples continuations of prompt to stdout."""
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if num_samples < 1:
        raise GptlabError(f"num_samples={num_samples} must be >= 1")
    loaded = load_run(run, pick_device(device))
    loaded.tokenizer.encode(prompt)  # refuse unknown characters before printing anything
    for i in range(num_samples):
        if num_samples > 1:
            print(f"--- sample {i + 1}/{num_samples} ---", flush=True)
        sys.stdout.write(prompt)
        s = None if seed is None else seed + i
        for piece in complete(loaded.model, loaded.tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, s):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    sys.stdout.flush()
