"""Writing a pair's target with either architecture, and the sample a training run on pairs shows
at each evaluation: the target its model writes for a held-out source (the first validation pair's,
the first training pair's where there is no val split)."""

from __future__ import annotations

from gptlab.config import TrainConfig
from gptlab.data.loader import Dataset
from gptlab.data.pairs import read_pairs, separator_id
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.inference.seq2seq import generate_targets
from gptlab.model import Model
from gptlab.model.encdec import EncoderDecoder
from gptlab.tokenizers import Tokenizer


def write_target(model: Model, tokenizer: Tokenizer, source_ids: list[int], params: SamplingParams) -> str:
    """The target a model writes for source ids: an encoder–decoder reads the source and writes until
    its end token; a decoder-only GPT continues "source [sep]" until the next separator."""
    sep = separator_id(tokenizer)
    if isinstance(model, EncoderDecoder):
        return tokenizer.decode(generate_targets(model, sep, source_ids, params)[0])
    steps = generate_steps(model, None, [list(source_ids) + [sep]], params, end=sep)  # sep: the target's end
    return tokenizer.decode([t for s in steps if (t := s[0].token) is not None and t != sep])


def pair_sample(model: Model, dataset: Dataset, tcfg: TrainConfig, step: int) -> tuple[str, str]:
    """(what the model read, what it wrote): "SOURCE -> " and the target it writes for it."""
    split = "val" if dataset.splits.get("val", {}).get("pairs") else "train"
    # Cut as training cuts sources (data/pair_loader.py), so a long one is read, not refused.
    source_ids = [int(i) for i in read_pairs(dataset.path, dataset.meta, split).pair(0)[0]][: model.config.block_size]
    params = SamplingParams(tcfg.sample_tokens, tcfg.sample_temperature, tcfg.sample_top_k, seed=tcfg.seed + step)
    return f"{dataset.tokenizer.decode(source_ids)} -> ", write_target(model, dataset.tokenizer, source_ids, params)
