"""Encoder–decoder vs decoder-only GPT on the couplet task (對句), with equal training time on this CPU.

The task: the couplets of every poem in ../shared/data/tang_poems.jsonl (`gptlab couplets`), the
first line as source and the second as target, prepared as a pairs dataset (char tokenizer; a
seeded 2% of the couplets held out). Two models of width n_embd=96 (4 heads) with the same parameter
count (within 1%), batches of 32 pairs, AdamW at lr 3e-3:

    encdec: arch=encdec, 3 encoder + 3 decoder layers, reading the source, writing the target
    gpt:    arch=gpt, 7 layers, reading "source<sep>target<sep>", the loss on the target (and its end) only

Both train with the trainer's own step (train/step.py: the same optimizer, clipping and loss),
batches from the same pair loader the trainer uses, the same seed and learning-rate rule. Equal
training time on a shared, loaded machine: the two alternate in slices (SLICE seconds each) until
each has trained BUDGET seconds of its own, so both see the same load; the learning rate warms up,
then decays (cosine) with the fraction of the time budget used. Then each is measured on every
held-out couplet: target loss in bits per character (each target's end counted as one character),
beside the character-frequency (unigram) reference, and a few held-out couplets are written side by
side (greedy). Last line: one JSON object.

    python benchmarks/encdec_couplets.py [--budget 600] [--slice 15]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gptlab.config import build_config  # noqa: E402
from gptlab.data.couplets import write_couplets  # noqa: E402
from gptlab.data.loader import Dataset, batch_loader  # noqa: E402
from gptlab.data.pairs import prepare_pairs, read_pairs  # noqa: E402
from gptlab.data.units import bits_per  # noqa: E402
from gptlab.inference.engine import SamplingParams  # noqa: E402
from gptlab.inference.evaluate_pairs import evaluate_pairs  # noqa: E402
from gptlab.inference.pair_sample import write_target  # noqa: E402
from gptlab.model import build_model  # noqa: E402
from gptlab.model.accounting import count_params  # noqa: E402
from gptlab.train.distributed import Ranks  # noqa: E402
from gptlab.train.step import make_runner  # noqa: E402

POEMS = ROOT.parent / "shared" / "data" / "tang_poems.jsonl"
SHAPE = ["n_embd=96", "n_head=4", "block_size=32", "dropout=0.0"]
ARCHS = {"encdec": ["arch=encdec", "n_layer=3"], "gpt": ["arch=gpt", "n_layer=7"]}
TRAIN = ["batch_size=32", "lr=3e-3", "min_lr=3e-4", "warmup_steps=50", "weight_decay=0.1", "device=cpu", "compile=off"]
SAMPLES = 6


def unigram_bpc(dataset: Dataset) -> float:
    """The reference a model must beat: each target character (and the end) predicted from the training
    targets' character frequencies alone (add-one smoothed), in bits per character of the held-out targets."""
    import numpy as np

    V, sep = dataset.tokenizer.vocab_size, int(dataset.meta["separator"])
    counts = np.bincount(np.asarray(read_pairs(dataset.path, dataset.meta, "train").target), minlength=V) + 1.0
    counts[sep] += dataset.splits["train"]["pairs"]
    val = read_pairs(dataset.path, dataset.meta, "val")
    ids = np.concatenate([np.asarray(val.target), np.full(len(val), sep)])
    return float(-np.log2(counts[ids] / counts.sum()).sum() / dataset.splits["val"]["chars"])


def load() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Contender:
    """One model training on the pairs in slices, with its own clock of training time."""

    def __init__(self, name: str, dataset: Dataset, vocab_size: int):
        self.name = name
        self.cfg = build_config("cpu-tiny", None, SHAPE + ARCHS[name] + TRAIN)
        self.cfg.model.vocab_size = vocab_size
        torch.manual_seed(self.cfg.train.seed)
        self.model = build_model(self.cfg.model)
        self.runner = make_runner(self.model, self.cfg.train, Ranks(), torch.device("cpu"))
        self.loader = batch_loader(
            dataset,
            "train",
            self.cfg.train.batch_size,
            self.cfg.model.block_size,
            seed=self.cfg.train.seed,
            arch=self.cfg.model.arch,
        )
        self.params = count_params(self.cfg.model).total
        self.steps, self.seconds, self.loss = 0, 0.0, float("nan")

    def lr_factor(self, budget: float) -> float:
        """Warm-up over the first steps, then cosine from 1 to min_lr/lr over the time budget."""
        t = self.cfg.train
        if self.steps < t.warmup_steps:
            return (self.steps + 1) / t.warmup_steps
        floor = t.min_lr / t.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, self.seconds / budget)))

    def train_for(self, seconds: float, budget: float) -> None:
        """Train until this slice's seconds (or the budget) are used."""
        self.model.train()
        end = min(self.seconds + seconds, budget)
        while self.seconds < end:
            start = time.perf_counter()
            self.loss = self.runner.step(self.loader.next_batch, self.lr_factor(budget)).item()
            self.seconds += time.perf_counter() - start
            self.steps += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per model (default 600)")
    parser.add_argument("--slice", type=float, default=15.0, help="seconds per turn (default 15)")
    args = parser.parse_args()
    load_before = load()
    print(
        f"load average before: {load_before} ({os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = write_couplets([str(POEMS)], Path(tmp) / "couplets.jsonl")
        print(f"couplets: {result.pairs:,} from {result.poems:,} poems", flush=True)
        prepare_pairs([str(Path(tmp) / "couplets.jsonl")], Path(tmp) / "data", "char", val_fraction=0.02)
        dataset = Dataset(Path(tmp) / "data")
        splits = dataset.splits
        print(
            f"pairs dataset: train {splits['train']['pairs']:,}, held out {splits['val']['pairs']:,}, "
            f"{dataset.tokenizer.vocab_size:,} characters ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        models = [Contender(name, dataset, dataset.tokenizer.vocab_size) for name in ARCHS]
        for m in models:
            print(f"{m.name}: {m.params:,} parameters", flush=True)
        while any(m.seconds < args.budget for m in models):
            for m in models:
                if m.seconds < args.budget:
                    m.train_for(args.slice, args.budget)
            print(
                "  "
                + " | ".join(f"{m.name} {m.seconds:5.0f} s, step {m.steps:5d}, loss {m.loss:.3f}" for m in models)
                + f" | load {load()}",
                flush=True,
            )
        load_after = load()

        figures = {}
        for m in models:
            evaluated = evaluate_pairs(m.model, dataset, "val")
            bpc = bits_per(evaluated.loss, splits["val"], "chars")
            figures[m.name] = {"loss": evaluated.loss, "bpc": bpc}
            print(
                f"{m.name}: held-out target loss {evaluated.loss:.4f} nats/token = {bpc:.4f} bits/char "
                f"({evaluated.tokens:,} target tokens, {m.steps:,} steps, "
                f"{m.steps * m.cfg.train.batch_size:,} couplets seen)",
                flush=True,
            )

        unigram = unigram_bpc(dataset)
        print(
            f"reference: character frequencies alone give {unigram:.4f} bits/char on the held-out targets", flush=True
        )
        pairs, tok = read_pairs(dataset.path, dataset.meta, "val"), dataset.tokenizer
        greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
        print("held-out couplets, greedy (source | truth | encdec | gpt):", flush=True)
        samples = []
        for i in range(0, len(pairs), max(1, len(pairs) // SAMPLES))[:SAMPLES]:
            source, target = (list(map(int, a)) for a in pairs.pair(i))
            row = {"source": tok.decode(source), "truth": tok.decode(target)}
            row.update({m.name: write_target(m.model, tok, source, greedy) for m in models})
            samples.append(row)
            print(f"  {row['source']} | {row['truth']} | {row['encdec']} | {row['gpt']}", flush=True)
    print(f"load average after: {load_after}", flush=True)
    encdec, gpt = models
    print(
        json.dumps(
            {
                "encdec_target_bpc": round(figures["encdec"]["bpc"], 4),
                "gpt_target_bpc": round(figures["gpt"]["bpc"], 4),
                "bpc_ratio_encdec_to_gpt": round(figures["encdec"]["bpc"] / figures["gpt"]["bpc"], 4),
                "unigram_target_bpc": round(unigram, 4),
                "encdec_params": encdec.params,
                "gpt_params": gpt.params,
                "train_seconds_each": args.budget,
                "slice_seconds": args.slice,
                "encdec_steps": encdec.steps,
                "gpt_steps": gpt.steps,
                "held_out_couplets": splits["val"]["pairs"],
                "load_before": load_before,
                "load_after": load_after,
                "samples": samples,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
