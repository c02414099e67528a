"""Prepare: raw text -> tokenizer + token shards (train/val) + meta.json, streaming.

Two passes over the corpus stream, each holding one chunk of text at a time (about a megabyte):
the first trains the tokenizer (char, bpe; a pretrained encoding is only loaded) and measures the
documents, the second encodes them in worker processes and appends the ids to the shards of
their split. Documents are separated by the end-of-text token (kinds without one: a blank line).
Validation takes whole documents, a seeded choice, when the corpus has several; a single one is
cut at about 90%. The same inputs and settings give byte-identical files.

The directory is written as every dataset is (data/publish.py): under its lock, staged, then moved
into place, meta.json last. meta.json carries an `id`: a hash of the tokenizer and of every split's
token stream, so a trainer reading the directory can tell, at each evaluation, that the dataset was
replaced under it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data.corpora import Chunk, SkipReport, iter_chunks
from gptlab.data.encode import Batch, OrderedEncoder
from gptlab.data.progress import ByteProgress
from gptlab.data.publish import SPLITS, TOKENIZER_FILE, dataset_id, is_dataset_dir, publish, staged_dataset
from gptlab.data.shards import ShardWriter
from gptlab.errors import GptlabError
from gptlab.outputs import check_output_dir
from gptlab.tokenizers import Tokenizer, build_tokenizer, check_kind, needs_training

META_FORMAT = 1
CHAR_SEPARATOR = "\n\n"  # between documents, for kinds without an end-of-text token
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 ids per file
BATCH_CHARS = 1 << 20  # text handed to a worker at a time
# Below this much text per worker, starting processes costs more than it saves: encode in-process.
MIN_BYTES_PER_WORKER = 8 * BATCH_CHARS


@dataclass
class PrepareResult:
    """What prepare wrote, for printing."""

    meta: dict[str, Any]
    skipped: SkipReport


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (halves disk and memory for small vocabularies)."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def split_documents(lengths: Any, val_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the documents that form val: whole documents in a seeded random order,
    until val holds at least val_fraction of the characters (at least one, never all)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) < 2 or val_fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(lengths))
    reached = np.cumsum(lengths[order]) >= val_fraction * lengths.sum()
    count = int(np.argmax(reached)) + 1 if reached.any() else len(lengths)
    return np.sort(order[: min(max(count, 1), len(lengths) - 1)])


def check_dataset_options(
    out_dir: str | Path,
    val_fraction: float,
    tokenizer_kind: str,
    tokenizer_options: dict[str, Any] | None,
    specs: list[str],
) -> Path:
    """The checks every dataset build makes before any work (text or pairs); returns the out directory.
    The corpora (specs) and a tokenizer given as a path are inputs, which out must not touch (outputs.py)."""
    if not 0 <= val_fraction < 1:
        raise GptlabError(f"val_fraction={val_fraction} must be in [0, 1)")
    if tokenizer_options and tokenizer_kind != "bpe":
        raise GptlabError(f"{', '.join(tokenizer_options)} applies to the bpe tokenizer, not {tokenizer_kind}")
    out = Path(out_dir)
    inputs = [("the corpus", spec) for spec in specs] + [
        ("--tokenizer", tokenizer_kind.partition(":")[2] or tokenizer_kind)
    ]
    check_output_dir(out, inputs, "a dataset directory", is_dataset_dir)
    return out


def prepare(
    specs: list[str],
    out_dir: str | Path,
    tokenizer_kind: str = "char",
    val_fraction: float = 0.1,
    seed: int = 1337,
    text_field: str = "text",
    tokenizer_options: dict[str, Any] | None = None,
    workers: int = 1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
) -> PrepareResult:
    """Build a dataset directory from corpus specs with the tokenizer spec `tokenizer_kind`
    (char, bpe, gpt2, cl100k_base[:PATH], ...); see the module docstring."""
    check_kind(tokenizer_kind)
    if workers < 1 or shard_tokens < 1:
        raise GptlabError(f"workers={workers} and shard_tokens={shard_tokens} must be at least 1")
    if tokenizer_options and not needs_training(tokenizer_kind):
        raise GptlabError(f"{', '.join(tokenizer_options)} cannot be set for the pretrained {tokenizer_kind}")
    out = check_dataset_options(out_dir, val_fraction, tokenizer_kind, tokenizer_options, specs)
    with staged_dataset(out) as staging:
        return _prepare_staged(
            specs,
            out,
            staging,
            tokenizer_kind,
            val_fraction,
            seed,
            text_field,
            tokenizer_options,
            workers,
            shard_tokens,
            progress,
        )


def _prepare_staged(
    specs: list[str],
    out: Path,
    staging: Path,
    tokenizer_kind: str,
    val_fraction: float,
    seed: int,
    text_field: str,
    tokenizer_options: dict[str, Any] | None,
    workers: int,
    shard_tokens: int,
    progress: bool,
) -> PrepareResult:
    """prepare() once its arguments are checked and out is locked, writing into staging."""
    report = SkipReport()
    tokenizer, lengths, bar = _first_pass(specs, report, text_field, tokenizer_kind, tokenizer_options or {}, progress)
    if not lengths:
        detail = "; ".join(report.lines()) or "no files with text"
        raise GptlabError(f"the corpus {' '.join(specs)} has no text ({detail})")
    bar.close()
    val_docs = np.zeros(len(lengths), dtype=bool)
    val_docs[split_documents(lengths, val_fraction, seed)] = True
    cut_at = _single_cut(lengths[0], val_fraction) if len(lengths) == 1 and val_fraction > 0 else None
    dtype = token_dtype(tokenizer.vocab_size)
    workers = max(1, min(workers, bar.bytes // MIN_BYTES_PER_WORKER)) if MIN_BYTES_PER_WORKER else workers

    stats = _second_pass(
        specs,
        text_field,
        tokenizer,
        val_docs,
        cut_at,
        dtype,
        staging,
        workers,
        shard_tokens,
        ByteProgress("encoding", bar.bytes, progress),
    )
    tokenizer.save(staging / TOKENIZER_FILE)
    meta = {
        "format": META_FORMAT,
        "id": dataset_id(staging, stats),
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
        "dtype": dtype.name,
        "splits": stats,
        "sources": specs,
        "val_fraction": val_fraction,
        "seed": seed,
        "skipped": dict(report.reasons),
    }
    publish(staging, out, meta, [name for split in stats.values() for name in split["files"]])
    return PrepareResult(meta, report)


def _first_pass(
    specs: list[str], report: SkipReport, text_field: str, spec: str, options: dict[str, Any], progress: bool
) -> tuple[Tokenizer, array, ByteProgress]:
    """Train (or load) the tokenizer on the chunk stream while measuring each document's length;
    the progress bar is left open (closed once the corpus is known to hold text)."""
    lengths = array("q")  # characters per document: 8 bytes each, whatever the text size
    bar = ByteProgress("training tokenizer" if needs_training(spec) else "reading", None, progress)

    def texts() -> Iterator[str]:
        for chunk in iter_chunks(specs, report, text_field):
            if chunk.doc == len(lengths):
                lengths.append(0)
            lengths[chunk.doc] += len(chunk.text)
            bar.update(len(chunk.text.encode("utf-8")))
            yield chunk.text
        if spec == "char":
            yield CHAR_SEPARATOR  # the separator must be encodable by vocabularies learned from text

    if needs_training(spec):
        tokenizer = build_tokenizer(spec, texts(), **options)
    else:
        tokenizer = build_tokenizer(spec)  # before reading, so a missing encoding file fails fast
        for _ in texts():
            pass
    return tokenizer, lengths, bar


def _single_cut(length: int, val_fraction: float) -> int:
    """Where a lone document is cut: the first (1 - val_fraction) of its characters go to train."""
    return int(length * (1 - val_fraction))


def _second_pass(
    specs: list[str],
    text_field: str,
    tokenizer: Tokenizer,
    val_docs: np.ndarray,
    cut_at: int | None,
    dtype: np.dtype,
    staging: Path,
    workers: int,
    shard_tokens: int,
    bar: ByteProgress,
) -> dict[str, dict[str, Any]]:
    """Encode every chunk into its split's shards; returns the per-split statistics."""
    separator = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode(CHAR_SEPARATOR)
    stats: dict[str, dict[str, Any]] = {
        s: {"files": [], "tokens": 0, "documents": 0, "chars": 0, "bytes": 0} for s in SPLITS
    }
    writers = {s: ShardWriter(staging, s, dtype, shard_tokens) for s in SPLITS}
    batches: dict[str, Batch] = {s: [] for s in SPLITS}
    batch_chars = dict.fromkeys(SPLITS, 0)
    encoder = OrderedEncoder(tokenizer, separator, dtype, workers)
    last_doc, offset = -1, 0  # offset: characters of the current document seen so far

    def add(split: str, text: str, starts_doc: bool) -> Iterator[tuple[str, np.ndarray]]:
        stat = stats[split]
        # Separators are decided here, in document order, so the output never depends on workers.
        batches[split].append((text, starts_doc and stat["documents"] > 0 and cut_at is None))
        stat["documents"] += starts_doc
        stat["chars"] += len(text)
        stat["bytes"] += len(text.encode("utf-8"))
        batch_chars[split] += len(text)
        if batch_chars[split] >= BATCH_CHARS:
            yield from encoder.submit(split, batches[split])
            batches[split], batch_chars[split] = [], 0

    def write(results: Iterator[tuple[str, np.ndarray]], nbytes: int = 0) -> None:
        tokens = 0
        for split, ids in results:
            writers[split].write(ids)
            tokens += len(ids)
        bar.update(nbytes, tokens)

    try:
        for chunk in iter_chunks(specs, SkipReport(), text_field):
            starts = chunk.doc != last_doc
            if starts:
                last_doc, offset = chunk.doc, 0
            for split, text, first in _route(chunk, starts, offset, val_docs, cut_at):
                write(add(split, text, first))
            offset += len(chunk.text)
            bar.update(len(chunk.text.encode("utf-8")))
        for split in SPLITS:
            if batches[split]:
                write(encoder.submit(split, batches[split]))
        write(encoder.drain())
    finally:
        encoder.close()
    for split in SPLITS:
        stats[split]["files"] = writers[split].close()
        stats[split]["tokens"] = writers[split].tokens
        stats[split]["sha256"] = writers[split].digest.hexdigest()
    bar.close()
    return stats


def _route(
    chunk: Chunk, starts: bool, offset: int, val_docs: np.ndarray, cut_at: int | None
) -> list[tuple[str, str, bool]]:
    """(split, text, starts a document there) for one chunk; a lone document's chunk that holds
    the cut is split at the last line end before it (when within the last tenth), else at it."""
    if cut_at is None:
        return [("val" if val_docs[chunk.doc] else "train", chunk.text, starts)]
    end = offset + len(chunk.text)
    if end <= cut_at:
        return [("train", chunk.text, starts)]
    if offset > cut_at:
        return [("val", chunk.text, False)]
    local = cut_at - offset
    newline = chunk.text.rfind("\n", 0, local)
    at = newline + 1 if newline >= 0 and offset + newline > cut_at * 0.9 else local
    parts = [("train", chunk.text[:at], starts), ("val", chunk.text[at:], True)]
    return [part for part in parts if part[1]]
