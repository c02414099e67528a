"""BPE training time, encoding throughput, and bytes per token for char vs bpe.

On ../shared/data/tinyshakespeare.txt and ../shared/data/tang_poems.jsonl:
  1. train a byte-level BPE of the largest vocabulary size (the `tokenizers` library, all cores);
     smaller vocabularies are its first merges (BPE learns merges in order), so one training
     gives the bytes per token at every size;
  2. encode the corpus, repeated to about 20 MB, with one process and with one worker process per
     core (the path `gptlab prepare` takes), and report MB/s of UTF-8 text;
  3. bytes per token: char (one id per character) vs bpe at each vocabulary size.

    python benchmarks/tokenize_throughput.py [--vocab-sizes 512,1024,2048,4096]

Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "data"

from gptlab.data.corpora import SkipReport, iter_documents  # noqa: E402
from gptlab.data.encode import OrderedEncoder  # noqa: E402
from gptlab.tokenizers import BPETokenizer, CharTokenizer, Tokenizer  # noqa: E402

ENCODE_MB = 20  # text encoded per throughput measurement
BATCH_CHARS = 1 << 20


def documents(name: str) -> list[str]:
    """The corpus as gptlab reads it (a poem is title, author and lines)."""
    return [d.text for d in iter_documents([str(SHARED / name)], SkipReport())]


def encode_mb_per_s(tokenizer: Tokenizer, text: str, workers: int) -> float:
    """MB/s of UTF-8 text through prepare's encoder (workers processes; 1: in this process)."""
    repeats = max(1, int(ENCODE_MB * 1e6 / len(text.encode("utf-8"))))
    batches = [[(text[i : i + BATCH_CHARS], False)] for i in range(0, len(text), BATCH_CHARS)] * repeats
    encoder = OrderedEncoder(tokenizer, [], np.dtype(np.uint16), workers)
    try:
        for _ in encoder.submit("train", batches[0]):  # start the workers before the clock
            pass
        list(encoder.drain())
        start = time.perf_counter()
        for batch in batches:
            for _ in encoder.submit("train", batch):
                pass
        list(encoder.drain())
        seconds = time.perf_counter() - start
    finally:
        encoder.close()
    return len(text.encode("utf-8")) * repeats / 1e6 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-sizes", default="512,1024,2048,4096")
    args = parser.parse_args()
    sizes = sorted(int(v) for v in args.vocab_sizes.split(","))
    cores = os.cpu_count() or 1
    figures: dict[str, dict] = {}
    for name in ("tinyshakespeare.txt", "tang_poems.jsonl"):
        docs = documents(name)
        text = "\n\n".join(docs)
        nbytes = len(text.encode("utf-8"))
        print(f"{name}: {len(docs):,} documents, {len(text):,} characters, {nbytes:,} bytes", flush=True)
        start = time.perf_counter()
        bpe = BPETokenizer.train(iter(docs), vocab_size=sizes[-1])
        train_s = time.perf_counter() - start
        print(
            f"  bpe training, vocabulary {bpe.vocab_size:,}: {train_s:.1f} s ({nbytes / 1e6 / train_s:.2f} MB/s)",
            flush=True,
        )
        char = CharTokenizer.train([text])
        per_token = {"char": round(nbytes / len(char.encode(text)), 3)}
        for size in sizes:
            smaller = BPETokenizer(bpe.pieces[: size - 1])
            per_token[f"bpe_{size}"] = round(nbytes / len(smaller.encode_array(text)), 3)
        print("  bytes per token: " + ", ".join(f"{k} {v}" for k, v in per_token.items()), flush=True)
        speed = {}
        for kind, tok in (("bpe", bpe), ("char", char)):
            for workers in sorted({1, cores}):
                mbs = encode_mb_per_s(tok, text, workers)
                speed[f"{kind}_{workers}proc_mb_s"] = round(mbs, 2)
                print(
                    f"  encode {kind} (vocabulary {tok.vocab_size:,}), {workers} process(es): {mbs:.2f} MB/s",
                    flush=True,
                )
        figures[name] = {
            "bytes": nbytes,
            "bpe_train_s": round(train_s, 1),
            "bpe_train_vocab": bpe.vocab_size,
            "bytes_per_token": per_token,
            **speed,
        }
    print(json.dumps({"cores": cores, **figures}))


if __name__ == "__main__":
    main()
