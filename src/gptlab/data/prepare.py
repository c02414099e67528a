"""Prepare: raw text -> tokenizer + token files (train/val) + meta.json.

Two passes over the corpus stream: the first trains the tokenizer and measures the documents, the
second encodes them into one flat file of ids per split. Nothing is held whole in memory but one
document at a time. Files are written under temporary names and renamed at the end, so an
interrupted prepare never leaves a half-written dataset that looks complete.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data.corpora import Document, SkipReport, iter_documents
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write, atomic_write_json
from gptlab.tokenizers import KINDS, Tokenizer, check_kind

META_FORMAT = 1
CHAR_SEPARATOR = "\n\n"  # between documents, for kinds without an end-of-text token


@dataclass
class PrepareResult:
    """What prepare wrote, for printing."""

    meta: dict[str, Any]
    skipped: SkipReport


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (halves disk and memory for small vocabularies)."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def split_documents(lengths: list[int], val_fraction: float, seed: int) -> set[int]:
    """Indices of the documents that form val: whole documents, chosen by a seeded shuffle,
    until val holds at least val_fraction of the characters (at least one, never all)."""
    if len(lengths) < 2 or val_fraction <= 0:
        return set()
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    target, total, chosen = val_fraction * sum(lengths), 0, set()
    for i in order[:-1]:
        if total >= target:
            break
        chosen.add(i)
        total += lengths[i]
    return chosen


def prepare(specs: list[str], out_dir: str | Path, tokenizer_kind: str = "char",
            val_fraction: float = 0.1, seed: int = 1337, text_field: str = "text",
            tokenizer_options: dict[str, Any] | None = None) -> PrepareResult:
    """Build a dataset directory from corpus specs; see the module docstring."""
    check_kind(tokenizer_kind)
    if not 0 <= val_fraction < 1:
        raise GptlabError(f"val_fraction={val_fraction} must be in [0, 1)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GptlabError(f"--out {out} exists and is not a directory")

    # Pass 1: measure documents and train the tokenizer on the same stream.
    report = SkipReport()
    lengths: list[int] = []

    def measured() -> Any:
        for doc in iter_documents(specs, report, text_field):
            lengths.append(len(doc.text))
            yield doc.text
        yield CHAR_SEPARATOR  # the separator must be encodable by vocabularies learned from text

    tokenizer = KINDS[tokenizer_kind].train(measured(), **(tokenizer_options or {}))
    if not lengths:
        detail = "; ".join(report.lines()) or "no files with text"
        raise GptlabError(f"the corpus {' '.join(specs)} has no text ({detail})")
    val_docs = split_documents(lengths, val_fraction, seed)
    single_doc_cut = len(lengths) == 1 and val_fraction > 0

    # Pass 2: encode each document into its split's file.
    dtype = token_dtype(tokenizer.vocab_size)
    separator = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode(CHAR_SEPARATOR)
    stats = {s: {"files": [f"{s}.bin"], "tokens": 0, "documents": 0, "chars": 0, "bytes": 0}
             for s in ("train", "val")}
    handles = {}

    def write_splits(train_tmp: str, val_tmp: str) -> None:
        with open(train_tmp, "wb") as handles["train"], open(val_tmp, "wb") as handles["val"]:
            for i, doc in enumerate(iter_documents(specs, SkipReport(), text_field)):
                if single_doc_cut:
                    train_part, val_part = _cut(doc.text, val_fraction)
                    _append(tokenizer, Document(doc.source, train_part), [], stats["train"], handles["train"], dtype)
                    _append(tokenizer, Document(doc.source, val_part), [], stats["val"], handles["val"], dtype)
                else:
                    split = "val" if i in val_docs else "train"
                    _append(tokenizer, doc, separator, stats[split], handles[split], dtype)

    # Nested atomic writes: both split files appear together, after both are complete.
    atomic_write(out / "train.bin", lambda train_tmp: atomic_write(
        out / "val.bin", lambda val_tmp: write_splits(train_tmp, val_tmp)))
    tokenizer.save(out / "tokenizer.json")
    meta = {
        "format": META_FORMAT,
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
        "dtype": dtype.name,
        "splits": stats,
        "sources": specs,
        "val_fraction": val_fraction,
        "seed": seed,
        "skipped": dict(report.reasons),
    }
    atomic_write_json(out / "meta.json", meta)  # written last: its presence marks a complete dataset
    return PrepareResult(meta, report)


def _cut(text: str, val_fraction: float) -> tuple[str, str]:
    """Split one document: the first (1 - val_fraction) for train, the rest for val, at a line end."""
    at = int(len(text) * (1 - val_fraction))
    newline = text.rfind("\n", 0, at)
    at = newline + 1 if newline > at * 0.9 else at
    return text[:at], text[at:]


def _append(tokenizer: Tokenizer, doc: Document, separator: list[int], stat: dict[str, Any],
            handle: Any, dtype: np.dtype) -> None:
    if not doc.text:
        return
    ids = tokenizer.encode(doc.text)
    if stat["documents"] and separator:
        ids = separator + ids
    np.asarray(ids, dtype=dtype).tofile(handle)
    stat["tokens"] += len(ids)
    stat["documents"] += 1
    stat["chars"] += len(doc.text)
    stat["bytes"] += len(doc.text.encode("utf-8"))
