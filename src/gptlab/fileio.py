"""Atomic file writes (a temporary file beside the target, then a rename) and bounded line reads.

A crash or Ctrl-C mid-write leaves the previous file intact, never a half-written one. A line is
read with a bound on its length, so a file that never ends a line (a link to /dev/zero) is refused
in one line instead of filling memory.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from gptlab.errors import GptlabError

MAX_LINE_BYTES = 64 << 20  # one JSONL record or text line: far above any real one, far below memory


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
            plain_mode(tmp)  # mkstemp creates the file private (0600)
            write(tmp)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def plain_mode(path: str | Path, directory: bool = False) -> None:
    """Give a file (or directory) the mode a plain open() (or mkdir) would under the umask: some
    writers, mkstemp, mkdtemp and safetensors among them, make theirs private (0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, pretty-printed, keeping non-ASCII characters readable."""
    atomic_write_text(path, json_text(data))


def json_text(data: Any) -> str:
    """The JSON text atomic_write_json writes."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def bounded_lines(fh: IO[bytes] | io.BufferedIOBase, name: str | Path, limit: int | None = None) -> Iterator[bytes]:
    """The lines of a binary file, each with its newline; a line longer than limit bytes (default
    MAX_LINE_BYTES) is refused in one line naming the file and the line, before more of it is read."""
    limit = limit or MAX_LINE_BYTES
    lineno = 0
    while line := fh.readline(limit + 1):
        lineno += 1
        if len(line) > limit:
            raise GptlabError(
                f"{name} line {lineno} is longer than {limit:,} bytes (a file that never ends its lines?); "
                "split it into shorter records"
            )
        yield line
