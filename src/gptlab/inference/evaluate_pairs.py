"""`gptlab eval` on a dataset of pairs: the loss on every target of a split, each pair once.

Each pair is read as it trains (data/pair_loader.py): an encoder–decoder reads the source and
writes the target and its end; a decoder-only GPT reads "source [sep]" and writes the same. Only
those target ids count, so both architectures are measured on the same predictions.
"""

from __future__ import annotations

import math

import torch

from gptlab.data.loader import Dataset
from gptlab.data.pair_loader import collate, pair_rows
from gptlab.data.pairs import read_pairs
from gptlab.data.units import bits_per
from gptlab.errors import GptlabError
from gptlab.inference.engine import eval_mode
from gptlab.inference.evaluate import EvalResult
from gptlab.model import Model
from gptlab.model.loss import IGNORE, lm_loss
from gptlab.precision import autocast

DEFAULT_BATCH = 64  # pairs per forward pass: pairs are short


@torch.no_grad()
def evaluate_pairs(model: Model, dataset: Dataset, split: str, batch_size: int = 0) -> EvalResult:
    """Mean loss (nats per target token) of model over every pair of a split."""
    pairs = read_pairs(dataset.path, dataset.meta, split)
    if len(pairs) == 0:
        raise GptlabError(f"the {split} split of {dataset.path} holds no pairs")
    cfg, sep = model.config, int(dataset.meta["separator"])
    device = next(model.parameters()).device
    nats, count = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size or DEFAULT_BATCH):
            rows = [
                pair_rows(*pairs.pair(i), sep, cfg.block_size, cfg.arch)
                for i in range(start, min(len(pairs), start + (batch_size or DEFAULT_BATCH)))
            ]
            batch = collate(rows).to(device)
            with autocast(device):
                logits, _ = model(batch.inputs, **batch.model_inputs())
            targets = batch.loss_targets()
            nats += lm_loss(logits, targets, reduction="sum").item()
            count += int((targets != IGNORE).sum())  # the targets the loss counted
    if not count:
        raise GptlabError(f"the {split} split of {dataset.path} has no target token to score")
    loss = nats / count
    return EvalResult(split, count, loss, math.exp(loss), bits_per(loss, dataset.splits[split], "bytes"))
