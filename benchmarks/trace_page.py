"""What the page's step-through view costs on a gpt2-small-shaped model (12 layers, 12 heads, 768 wide,
block 1024), side by side with the next-token panel's call: the time of the first /api/trace request of
a prompt (its whole trace recorded once) and of a later stage's (served from the record), the record's
bytes, and the JSON bytes of one stage against those of sending every stage's tensor whole.

The model is freshly initialised (the cost does not depend on the weights), over a byte-level BPE
trained here on tinyshakespeare (the vocabulary of a real tokenizer, as large as that text allows).

    python benchmarks/trace_page.py [--tokens 256] [--repeat 3]

Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gptlab.config import build_config  # noqa: E402
from gptlab.inference.probs import next_token_probs, top_candidates  # noqa: E402
from gptlab.inference.trace import record_trace, trace_ids, view_stage  # noqa: E402
from gptlab.model import build_model  # noqa: E402
from gptlab.tokenizers.bpe import BPETokenizer  # noqa: E402


def _best(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="prompt length in tokens (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats, best kept (default 3)")
    args = parser.parse_args()

    text = (ROOT.parent / "shared" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    print("training a byte-level BPE on tinyshakespeare ...", flush=True)
    tokenizer = BPETokenizer.train([text], vocab_size=50257)
    ids = tokenizer.encode(text)[: args.tokens]
    cfg = build_config("gpt2-small", None, [f"vocab_size={tokenizer.vocab_size}", "dropout=0.0"])
    print(
        f"gpt2-small shape, vocabulary {tokenizer.vocab_size}, prompt of {len(ids)} tokens; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()

    t_next, probs = _best(lambda: next_token_probs(model, ids), args.repeat)
    next_bytes = len(json.dumps({"candidates": [c.__dict__ for c in top_candidates(tokenizer, probs, 10)]}))
    print(f"/api/next's call: {t_next:.3f} s, {next_bytes:,} bytes", flush=True)

    t_record, record = _best(lambda: record_trace(model, tokenizer, ids), args.repeat)
    print(
        f"/api/trace, first request (the trace recorded): {t_record:.3f} s, {record.nbytes / 1e6:.1f} MB kept",
        flush=True,
    )
    names = [s["name"] for s in record.overview["stages"]]
    figures = {}
    for name in ("blocks.5.attn.qkv", "blocks.5.attn.weights", "blocks.5.mlp.fc", "probs"):
        index = names.index(name)
        t, view = _best(lambda index=index: view_stage(record, index), args.repeat)
        size = len(json.dumps(view))
        figures[name] = {"seconds": round(t, 4), "bytes": size}
        print(f"/api/trace stage {name}, from the record: {t:.4f} s, {size:,} bytes", flush=True)

    whole = trace_ids(model, tokenizer, ids)
    whole_bytes = sum(s.value.numel() for s in whole.stages) * 8  # ~8 JSON characters per rounded number
    print(
        f"every stage's tensor whole: {len(whole.stages)} stages, {whole_bytes / 1e6:,.0f} MB of JSON at least",
        flush=True,
    )
    worst = max(f["seconds"] for f in figures.values())
    print(
        json.dumps(
            {
                "tokens": len(ids),
                "vocab_size": tokenizer.vocab_size,
                "stages": len(names),
                "next_seconds": round(t_next, 3),
                "record_seconds": round(t_record, 3),
                "record_bytes": record.nbytes,
                "trace_stage_seconds_max": worst,
                "record_over_next": round(t_record / t_next, 2),
                "trace_over_next": round(worst / t_next, 3),
                "trace_stage_bytes_max": max(f["bytes"] for f in figures.values()),
                "whole_trace_bytes_min": whole_bytes,
                "per_stage": figures,
            }
        )
    )


if __name__ == "__main__":
    main()
