"""Reading JSON that someone else wrote (a checkpoint's config.json, tokenizer.json, weights index, a JSONL
record): bounded in size and nesting, strict about numbers and text, every failure one GptlabError line.

Python's json module alone would accept NaN and Infinity (and 1e999 as infinity), recurse until a
RecursionError on a deeply nested file, and hand back strings holding lone surrogates that fail later
when they are written out.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError

MAX_DEPTH = 100  # nesting: real config and tokenizer files stay under 10
MiB = 1 << 20
# An escaped surrogate: the only way a lone one gets into parsed JSON (UTF-8 bytes cannot hold one).
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def _check_tree(value: Any, max_depth: int, strings: bool) -> None:
    """Refuse nesting deeper than max_depth and (where strings) text that is not Unicode: iteratively,
    so that a deep value never costs a RecursionError here either."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise ValueError(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                if strings:
                    stack.extend((key, depth) for key in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif strings and isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate (not Unicode text)") from None


def parse_json(text: str | bytes, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """The value of one JSON text, or GptlabError('WHAT is not valid JSON: why') in one line."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
        _check_tree(value, max_depth, strings=bool(_ESCAPED_SURROGATE.search(text)))
    except RecursionError:
        raise GptlabError(f"{what} is not valid JSON: nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit integer, the checks above
        raise GptlabError(f"{what} is not valid JSON: {str(exc).splitlines()[0]}") from None
    return value


def read_json(path: str | Path, max_bytes: int = 16 * MiB, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in the file at path, refusing a file larger than max_bytes before reading it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)  # never more than the bound, whatever the file claims (a device, a pipe)
    except OSError as exc:
        raise GptlabError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise GptlabError(f"{path} is larger than {max_bytes // MiB:,} MiB, more than such a file ever holds")
    return parse_json(raw, str(path), max_depth)


def read_json_object(path: str | Path, max_bytes: int = 16 * MiB) -> dict[str, Any]:
    """read_json, refusing anything but a JSON object."""
    value = read_json(path, max_bytes)
    if not isinstance(value, dict):
        raise GptlabError(f"{path} is not a JSON object")
    return value
