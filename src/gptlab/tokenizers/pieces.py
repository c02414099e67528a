"""What a tokenizer makes of a text: each piece with its id, in order, and how dense the ids are.

Behind `gptlab tokenize`. A piece that is part of a character (a byte-level token holding one or
two of the three bytes of a Chinese character) shows its bytes as \\xNN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.tokenizers import TOKENIZER_FILE, TRAINED, Tokenizer, build_tokenizer


def tokenizer_for(spec: str | None = None, run: str | None = None) -> Tokenizer:
    """The tokenizer of a spec (a pretrained encoding or a tokenizer.json path) or of a run or
    dataset directory."""
    target = run if run is not None else spec
    assert target is not None
    path = Path(target).expanduser()
    if path.is_dir() and not (path / TOKENIZER_FILE).is_file():
        raise GptlabError(f"{path} holds no {TOKENIZER_FILE} (expected a run or a prepared dataset directory)")
    if run is not None and not path.exists():
        raise GptlabError(f"run not found: {run} (a run or dataset directory, or use --tokenizer SPEC)")
    if spec in TRAINED:
        raise GptlabError(
            f"the {spec} tokenizer is learned from a corpus: run `gptlab prepare CORPUS "
            f"--tokenizer {spec} --out DIR`, then `gptlab tokenize DIR TEXT`"
        )
    return build_tokenizer(target)


def display(piece: bytes) -> str:
    """A piece as readable text: invalid or partial UTF-8 as \\xNN, control characters escaped."""
    text = piece.decode("utf-8", errors="backslashreplace")
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)


def describe(tokenizer: Tokenizer, text: str) -> dict[str, Any]:
    """Pieces (id, readable piece, its bytes in hex, whether it is a whole character sequence) and
    counts: tokens, characters, UTF-8 bytes, and characters and bytes per token."""
    ids = tokenizer.encode(text)
    pieces = []
    for token_id in ids:
        raw = tokenizer.token_bytes(token_id)
        try:
            raw.decode("utf-8")
            partial = False
        except UnicodeDecodeError:
            partial = True
        pieces.append({"id": token_id, "piece": display(raw), "hex": raw.hex(), "partial_utf8": partial})
    n_bytes = len(text.encode("utf-8"))
    return {
        "tokenizer": _name(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "tokens": pieces,
        "count": len(ids),
        "chars": len(text),
        "bytes": n_bytes,
        "chars_per_token": len(text) / len(ids) if ids else None,
        "bytes_per_token": n_bytes / len(ids) if ids else None,
    }


def format_description(info: dict[str, Any]) -> list[str]:
    """describe() output as lines for a terminal: one piece per line, then the counts."""
    lines = [f"tokenizer: {info['tokenizer']} ({info['vocab_size']:,} ids)", f"{'#':>5}  {'id':>7}  piece"]
    for i, piece in enumerate(info["tokens"]):
        note = "  (part of a character)" if piece["partial_utf8"] else ""
        lines.append(f"{i:>5}  {piece['id']:>7}  '{piece['piece']}'{note}")
    if info["count"]:
        density = f": {info['chars_per_token']:.2f} characters and {info['bytes_per_token']:.2f} bytes per token"
    else:
        density = ""
    lines.append(f"{info['count']:,} tokens, {info['chars']:,} characters, {info['bytes']:,} bytes{density}")
    return lines


def _name(tokenizer: Tokenizer) -> str:
    name = getattr(tokenizer, "name", None)
    return f"{tokenizer.kind} {name}" if name else tokenizer.kind
