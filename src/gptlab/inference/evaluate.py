"""Loss, perplexity and bits per byte of a model over a whole dataset split (`gptlab eval`'s engine).

Every token of the split (but the first of each shard, which has no context) is predicted once:
the split is cut into consecutive windows of block_size tokens, so each prediction sees the
tokens before it in its window (not a random sample of batches, as the training-time estimate is).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from gptlab.data.loader import Dataset
from gptlab.data.units import bits_per
from gptlab.errors import GptlabError
from gptlab.inference.engine import eval_mode
from gptlab.model import Model
from gptlab.model.loss import lm_loss
from gptlab.precision import autocast

LOGITS_BUDGET = 1 << 26  # floats of logits held at once (256 MB): caps the default batch size
MAX_BATCH = 32  # windows per forward pass by default: big enough to be efficient, small enough to show progress


@dataclass
class EvalResult:
    """What a whole-split evaluation measured."""

    split: str
    tokens: int  # tokens predicted
    loss: float  # mean cross-entropy, nats per token
    perplexity: float  # exp(loss): the model is as unsure as a fair choice among this many tokens
    bits_per_byte: float | None  # loss in bits per UTF-8 byte of source text (None: meta lacks bytes)

    def to_dict(self) -> dict:
        """Plain data for JSON."""
        return asdict(self)


def windows(shards: list[np.ndarray], block_size: int) -> Iterator[np.ndarray]:
    """Consecutive windows of up to block_size+1 tokens covering each shard, overlapping by one token
    (a window's last token is the next window's first input), so every token after the first is a
    target exactly once."""
    for shard in shards:
        for start in range(0, len(shard) - 1, block_size):
            yield shard[start : start + block_size + 1]


def evaluate(model: Model, dataset: Dataset, split: str, batch_size: int = 0, show_progress: bool = True) -> EvalResult:
    """Mean next-token loss of model over every window of a split."""
    block_size, vocab = model.config.block_size, model.config.vocab_size
    shards = dataset.shards(split)
    total = sum(max(0, len(s) - 1) for s in shards)
    if total == 0:
        raise GptlabError(f"the {split} split of {dataset.path} has no tokens to predict")
    batch_size = batch_size or max(1, min(MAX_BATCH, LOGITS_BUDGET // (block_size * vocab)))
    device = next(model.parameters()).device
    bar = _Progress(total, show_progress)
    nats, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        batch: list[np.ndarray] = []
        for window in windows(shards, block_size):
            # Only full windows share a batch; a shard's shorter last window goes alone.
            if batch and (len(window) != len(batch[0]) or len(batch) == batch_size):
                nats, count = _add(model, batch, device, nats, count, bar)
                batch = []
            batch.append(window)
        nats, count = _add(model, batch, device, nats, count, bar)
    bar.close()
    loss = nats / count
    meta = dataset.splits[split]
    return EvalResult(split, count, loss, math.exp(loss), bits_per(loss, meta, "bytes"))


def _add(
    model: Model, batch: list[np.ndarray], device: torch.device, nats: float, count: int, bar: _Progress
) -> tuple[float, int]:
    data = torch.from_numpy(np.stack(batch).astype(np.int64)).to(device)
    x, y = data[:, :-1], data[:, 1:]
    with autocast(device):
        logits, _ = model(x)
    nats += lm_loss(logits, y, reduction="sum").item()
    bar.update(y.numel(), nats / (count + y.numel()))
    return nats, count + y.numel()


class _Progress:
    """A tqdm bar on a terminal; a line every 10% otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.next_report = total, 0, 0.1
        self.enabled = enabled
        self.bar = (
            tqdm(total=total, unit="tok", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
            if enabled and sys.stderr.isatty()
            else None
        )

    def update(self, n: int, loss: float) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
        elif self.enabled and self.done >= self.next_report * self.total:
            print(
                f"eval: {self.done:,}/{self.total:,} tokens ({self.done / self.total:.0%}) | loss so far {loss:.4f}",
                file=sys.stderr,
                flush=True,
            )
            while self.next_report * self.total <= self.done:
                self.next_report += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
