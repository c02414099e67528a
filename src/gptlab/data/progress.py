"""Progress of a long pass over the corpus: bytes read, tokens written, throughput.

A tqdm bar on a terminal; otherwise a plain log line every LOG_EVERY_S seconds and one at the end.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_EVERY_S = 15.0


class ByteProgress:
    """Counts bytes of text (and tokens, once there are any) for one pass."""

    def __init__(self, desc: str, total_bytes: int | None = None, enabled: bool = True):
        self.desc, self.total, self.enabled = desc, total_bytes, enabled
        self.bytes = self.tokens = 0
        self.start = self._last_log = time.perf_counter()
        self.bar = (
            tqdm(
                total=total_bytes,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                dynamic_ncols=True,
                file=sys.stderr,
            )
            if enabled and sys.stderr.isatty()
            else None
        )

    def update(self, nbytes: int = 0, ntokens: int = 0) -> None:
        """Add bytes read and tokens written since the last call."""
        self.bytes += nbytes
        self.tokens += ntokens
        if self.bar is not None:
            self.bar.update(nbytes)
            if ntokens:
                self.bar.set_postfix_str(
                    f"{self.tokens:,} tokens, {self.tokens / self._elapsed():,.0f} tok/s", refresh=False
                )
        elif self.enabled and time.perf_counter() - self._last_log >= LOG_EVERY_S:
            self._log()

    def _elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def _log(self) -> None:
        self._last_log = time.perf_counter()
        of = f" of {self.total / 1e6:,.1f} MB" if self.total else ""
        tokens = f", {self.tokens:,} tokens ({self.tokens / self._elapsed():,.0f} tok/s)" if self.tokens else ""
        print(
            f"{self.desc}: {self.bytes / 1e6:,.1f} MB{of} ({self.bytes / 1e6 / self._elapsed():,.1f} MB/s){tokens}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        """Finish the bar, or print the last log line."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._log()
