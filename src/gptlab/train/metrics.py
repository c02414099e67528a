"""Metrics (JSON lines, and a tracker beside them: trackers.py) and progress display (a bar on a
terminal, plain log lines otherwise)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gptlab.fileio import atomic_write_text, bounded_lines


class MetricsLog:
    """RUN/metrics.jsonl: one JSON object per logged step, appended and flushed as it happens."""

    def __init__(self, path: str | Path, resume_step: int | None = None, tracker: Any = None):
        self.path, self.tracker = Path(path), tracker  # tracker: trackers.Tracker, fed every record too
        if resume_step is not None and self.path.exists():
            # Lines logged after the checkpoint we resume from belong to a trajectory that is
            # about to be replayed; keep only what the checkpoint covers.
            kept = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tracker is not None:
            self.tracker.log(record)

    def close(self) -> None:
        """Close the file (and the tracker)."""
        self._file.close()
        if self.tracker is not None:
            self.tracker.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    with open(p, "rb") as fh:
        for line in bounded_lines(fh, p):
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                # A run killed mid-write (or still writing) can end in a partial line: it holds nothing whole.
                continue
    return records


class Progress:
    """Step counter with loss, tokens/s and ETA: a tqdm bar on a terminal, log lines otherwise."""

    def __init__(self, start: int, total: int, log_interval: int):
        self.interactive = sys.stderr.isatty()
        self.log_interval = log_interval
        self.total = total
        self.bar = (
            tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)
            if self.interactive
            else None
        )

    def update(self, step: int, loss: float, tokens_per_sec: float, eta_s: float, extra: str = "") -> None:
        """Report one finished step."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"loss {loss:.4f} | {tokens_per_sec:,.0f} tok/s{extra}", refresh=False)
        elif step % self.log_interval == 0 or step == self.total:
            print(
                f"step {step}/{self.total} | loss {loss:.4f} | {tokens_per_sec:,.0f} tok/s{extra} | "
                f"eta {_clock(eta_s)}",
                flush=True,
            )

    def write(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
