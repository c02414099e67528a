"""Atomic file writes: a temporary file beside the target, then a rename.

A crash or Ctrl-C mid-write leaves the previous file intact, never a half-written one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) (its return value is ignored), then rename tmp_path over path."""
    atomic_write_group([(path, write)])


def atomic_write_group(writes: list[tuple[str | Path, Callable[[str], object]]]) -> None:
    """Write several files that belong together: every one goes to a temporary file first, and only
    when all are complete are they renamed over their targets, back to back and in order (so the
    last one can serve as the marker that the set is complete). A failure while writing leaves
    every previous file as it was."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, write in writes:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temps.append((tmp, path))
            # mkstemp creates the file private (0600); give it the mode a plain open() would have.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            write(tmp)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, pretty-printed, keeping non-ASCII characters readable."""
    atomic_write_text(path, json_text(data))


def json_text(data: Any) -> str:
    """The JSON text atomic_write_json writes."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
