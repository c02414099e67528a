"""The sample a training run on pairs shows at each evaluation: the target its model writes for a
held-out source (the first validation pair's, the first training pair's where there is no val split)."""

from __future__ import annotations

import torch

from gptlab.config import TrainConfig
from gptlab.data.loader import Dataset
from gptlab.data.pairs import read_pairs, separator_id
from gptlab.inference.engine import SamplingParams, generate_steps


def pair_sample(model: torch.nn.Module, dataset: Dataset, tcfg: TrainConfig, step: int) -> tuple[str, str]:
    """(what the model read, what it wrote): "SOURCE -> " and the encoder–decoder's target, or for a
    decoder-only model the source and separator as its prompt and the continuation up to the end."""
    split = "val" if dataset.splits.get("val", {}).get("pairs") else "train"
    tokenizer = dataset.tokenizer
    sep = separator_id(tokenizer)
    source_ids = [int(i) for i in read_pairs(dataset.path, dataset.meta, split).pair(0)[0]]
    source = tokenizer.decode(source_ids)
    params = SamplingParams(tcfg.sample_tokens, tcfg.sample_temperature, tcfg.sample_top_k, seed=tcfg.seed + step)
    if model.config.arch == "encdec":
        from gptlab.inference.seq2seq import translate

        return f"{source} -> ", translate(model, tokenizer, source, params)[0]
    written = []
    for steps in generate_steps(model, None, [source_ids + [sep]], params):
        if steps[0].token == sep:  # the target's end
            break
        written.append(steps[0].token)
    return f"{source} -> ", tokenizer.decode(written)
