"""Loss in units that do not depend on the tokenizer: bits per character or per byte of source text.

A dataset's meta.json counts, per split, its tokens and the characters and UTF-8 bytes of the text
they encode; nats per token times tokens per character (or byte), over ln 2, gives bits per
character (or byte). This is what makes a char model and a BPE model comparable.
"""

from __future__ import annotations

import math
from typing import Any


def bits_per(nats_per_token: float, split: dict[str, Any], unit: str) -> float | None:
    """Nats per token -> bits per `unit` ("chars" or "bytes") of a split's source text; None when
    the split's meta lacks the counts (datasets prepared before they were recorded)."""
    if not split.get(unit) or not split.get("tokens"):
        return None
    return nats_per_token / math.log(2) * split["tokens"] / split[unit]
