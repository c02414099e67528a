"""A dataset of pairs: source -> target records (JSONL {"source", "target"}) as token arrays.

`gptlab prepare FILE --pairs` writes, per split, three flat files beside the tokenizer:

    SPLIT.source.bin   every pair's source ids, one after the other (uint16/uint32 as for text)
    SPLIT.target.bin   every pair's target ids, likewise
    SPLIT.index.bin    int64 (pairs + 1, 2): where pair i's source and target start; i+1's start ends it

and a meta.json with "kind": "pairs", the separator id (the end-of-text token, or a newline's id for
tokenizers without one) that starts a decoder's target and ends every target, and per split the
counts the loss is reported in: "tokens" are the target ids a model predicts (each target and its
end), "chars" and "bytes" those of the targets, each end counted as one character (as a line's
newline would be), so bits per character compare across tokenizers and architectures.

Pairs are short (a line, a sentence) and held in memory while preparing; training reads the arrays
through memmaps. Validation takes a seeded random val_fraction of the pairs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data.corpora import SkipReport, iter_records
from gptlab.data.prepare import META_FORMAT, check_dataset_options, token_dtype
from gptlab.data.publish import SPLITS, TOKENIZER_FILE, dataset_id, publish, staged_dataset
from gptlab.errors import GptlabError
from gptlab.tokenizers import Tokenizer, build_tokenizer, check_kind, needs_training

PAIRS_KIND = "pairs"
FIELDS = ("source", "target")


@dataclass
class Pairs:
    """One split's pairs, read through memmaps: pair i is source[index[i,0]:index[i+1,0]] ->
    target[index[i,1]:index[i+1,1]]."""

    source: np.ndarray
    target: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index) - 1

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The source and target ids of pair i."""
        (s0, t0), (s1, t1) = self.index[i], self.index[i + 1]
        return self.source[s0:s1], self.target[t0:t1]


def separator_id(tokenizer: Tokenizer) -> int:
    """The token that starts a decoder's target and ends every target (and, for a decoder-only
    model, separates source from target): end-of-text, or a newline where the tokenizer has none."""
    if tokenizer.eot_id is not None:
        return tokenizer.eot_id
    ids = tokenizer.encode("\n")
    if len(ids) != 1:
        raise GptlabError("this tokenizer has no end-of-text token and no single id for a newline")
    return ids[0]


def read_pairs(path: Path, meta: dict[str, Any], split: str) -> Pairs:
    """The pairs of one split of a prepared pairs dataset (memmaps, never loaded whole)."""
    if split not in meta["splits"]:
        raise GptlabError(f"dataset {path} has no split '{split}' (has: {', '.join(meta['splits'])})")
    files = meta["splits"][split]["files"]
    arrays = {}
    for part, dtype in (("source", meta["dtype"]), ("target", meta["dtype"]), ("index", "int64")):
        file = path / files[part]
        if not file.is_file():
            raise GptlabError(f"dataset {path} is missing its file {files[part]}")
        arrays[part] = np.memmap(file, dtype=dtype, mode="r") if file.stat().st_size else np.zeros(0, dtype)
    return Pairs(arrays["source"], arrays["target"], arrays["index"].reshape(-1, 2))


def prepare_pairs(
    specs: list[str],
    out_dir: str | Path,
    tokenizer_kind: str = "char",
    val_fraction: float = 0.1,
    seed: int = 1337,
    tokenizer_options: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], SkipReport]:
    """Build a pairs dataset directory from record files of {"source": str, "target": str}; returns
    its meta and what was skipped."""
    check_kind(tokenizer_kind)
    out = check_dataset_options(out_dir, val_fraction, tokenizer_kind, tokenizer_options, specs)
    report = SkipReport()
    pairs = []
    for record in iter_records(specs, report):
        values = [record.get(f) if isinstance(record, dict) else None for f in FIELDS]
        texts = [v for v in values if isinstance(v, str)]
        if len(texts) < len(FIELDS):
            report.skip("record without string 'source' and 'target' fields")
        elif not all(t.strip() for t in texts):
            report.skip("record with an empty source or target")
        else:
            pairs.append(tuple(texts))
    if not pairs:
        detail = "; ".join(report.lines()) or "no records"
        raise GptlabError(f"{' '.join(specs)} holds no source/target pairs ({detail})")

    texts = [t for pair in pairs for t in pair] + ["\n"]  # a char vocabulary must hold the separator
    tokenizer = (
        build_tokenizer(tokenizer_kind, iter(texts), **(tokenizer_options or {}))
        if needs_training(tokenizer_kind)
        else build_tokenizer(tokenizer_kind)
    )
    sep = separator_id(tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(pairs))
    n_val = min(len(pairs) - 1, round(val_fraction * len(pairs))) if len(pairs) > 1 and val_fraction > 0 else 0
    chosen = {"val": np.sort(order[:n_val]), "train": np.sort(order[n_val:])}

    with staged_dataset(out) as staging:
        stats = {
            split: _write_split(staging, split, [pairs[i] for i in chosen[split]], tokenizer, dtype) for split in SPLITS
        }
        tokenizer.save(staging / TOKENIZER_FILE)
        meta = {
            "format": META_FORMAT,
            "kind": PAIRS_KIND,
            "id": dataset_id(staging, stats),
            "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
            "dtype": dtype.name,
            "separator": sep,
            "splits": stats,
            "sources": specs,
            "val_fraction": val_fraction,
            "seed": seed,
            "skipped": dict(report.reasons),
        }
        publish(staging, out, meta, [name for split in stats.values() for name in split["files"].values()])
    return meta, report


def _write_split(
    staging: Path, split: str, pairs: list[tuple[str, str]], tokenizer: Tokenizer, dtype: np.dtype
) -> dict[str, Any]:
    """Encode one split's pairs into its three files; its counts (target-side, ends included)."""
    encoded = [(tokenizer.encode(s), tokenizer.encode(t)) for s, t in pairs]
    index = np.zeros((len(encoded) + 1, 2), dtype=np.int64)
    index[1:, 0] = np.cumsum([len(s) for s, _ in encoded])
    index[1:, 1] = np.cumsum([len(t) for _, t in encoded])
    files = {part: f"{split}.{part}.bin" for part in ("source", "target", "index")}
    source = np.fromiter((i for s, _ in encoded for i in s), dtype=dtype, count=int(index[-1, 0]))
    target = np.fromiter((i for _, t in encoded for i in t), dtype=dtype, count=int(index[-1, 1]))
    digest = hashlib.sha256()
    for part, array in (("source", source), ("target", target), ("index", index)):
        (staging / files[part]).write_bytes(array.tobytes())
        digest.update(array.tobytes())
    n = len(pairs)
    return {
        "files": files,
        "pairs": n,
        "documents": n,
        "source_tokens": int(index[-1, 0]),
        "tokens": int(index[-1, 1]) + n,
        "chars": sum(len(t) for _, t in pairs) + n,
        "bytes": sum(len(t.encode("utf-8")) for _, t in pairs) + n,
        "sha256": digest.hexdigest(),
    }
