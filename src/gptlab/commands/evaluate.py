"""`gptlab eval`: load a run and a dataset, evaluate every token (or pair) of a split, print the figures."""

from __future__ import annotations

import json
from pathlib import Path

from gptlab.data.loader import Dataset
from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.inference.evaluate import EvalResult, evaluate
from gptlab.inference.evaluate_pairs import evaluate_pairs
from gptlab.runs import load_run


def evaluate_run(
    run: str,
    data: str | None = None,
    split: str = "val",
    batch_size: int = 0,
    device: str = "auto",
    show_progress: bool = True,
) -> EvalResult:
    """`gptlab eval`: load a run and its dataset (or another one with the same tokenizer), evaluate."""
    loaded = load_run(run, pick_device(device))
    data = data or loaded.config.data
    if not data:
        raise GptlabError(f"{run} does not record its dataset; pass --data DIR")
    if not Path(data).is_dir():
        raise GptlabError(f"dataset not found: {data} (pass --data DIR)")
    dataset = Dataset(data)
    if dataset.kind != "pairs" and loaded.config.model.arch == "encdec":
        raise GptlabError(
            f"{run} is an encoder–decoder run: it is evaluated on a dataset of pairs, and {data} is a text dataset"
        )
    if dataset.tokenizer.to_dict() != loaded.tokenizer.to_dict():
        raise GptlabError(f"{data} was prepared with another tokenizer than {run} was trained with")
    if batch_size < 0:
        raise GptlabError(f"batch_size={batch_size} must be >= 1 (or 0: automatic)")
    if dataset.kind == "pairs":
        return evaluate_pairs(loaded.model, dataset, split, batch_size)
    return evaluate(loaded.model, dataset, split, batch_size, show_progress)


def print_evaluation(
    run: str, data: str | None, split: str, batch_size: int, device: str = "auto", as_json: bool = False
) -> None:
    """`gptlab eval`: evaluate_run's figures as one line, or as one JSON object."""
    result = evaluate_run(run, data, split, batch_size, device)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    bpb = f"{result.bits_per_byte:.4f} bits/byte" if result.bits_per_byte is not None else "bits/byte unknown"
    print(
        f"{result.split}: {result.tokens:,} tokens | loss {result.loss:.4f} nats/token | "
        f"perplexity {result.perplexity:.3f} | {bpb}"
    )
