"""Decode speed at batch 1: KV cache vs full recomputation, and Hugging Face GPT-2 on the same weights.

For the `tutorial` preset and a gpt2-small-shaped model (random weights, CPU, float32): greedy
decoding of 256 new tokens after a 1-token prompt, timed three ways in one run:
  cache      gptlab's engine: prefill once, then one token per step through the KV cache
  recompute  gptlab's engine without the cache: the whole context again at every step
  hf         transformers' GPT2LMHeadModel.generate (with its cache), the same weights loaded in
             (only where transformers is installed)
The three must produce the same tokens; the last line is a JSON object with the figures. The cache
and hf are timed in alternation, best of --rounds (default 3), so that load from other work on the
machine hits both alike; recompute, far slower, once.

    python benchmarks/decode.py [--threads N] [--rounds R]

--threads sets torch's intra-op threads for all three (default: torch's own choice, one per core).
On a machine shared with other work, one thread measures the code rather than the contention: a
small model's many tiny operations then wait on each other's threads far longer than they compute.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gptlab.config import build_config  # noqa: E402
from gptlab.inference.engine import SamplingParams, generate_steps  # noqa: E402
from gptlab.interop.export import transformers_model  # noqa: E402
from gptlab.model import build_model  # noqa: E402
from gptlab.model.gpt import GPT  # noqa: E402

NEW_TOKENS = 256
SHAPES = {"tutorial": ("tutorial", 65), "gpt2-small": ("gpt2-small", 50257)}  # preset, vocabulary


def decode(model: GPT, prompt: list[int], use_cache: bool) -> tuple[list[int], float]:
    """Greedy tokens and seconds taken."""
    start = time.perf_counter()
    tokens = [
        steps[0].token for steps in generate_steps(model, None, [prompt], SamplingParams(NEW_TOKENS, 0.0), use_cache)
    ]
    return tokens, time.perf_counter() - start


def to_hf(model: GPT):
    """The same weights in transformers' GPT-2 (interop's map and config), or None without transformers."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    return transformers_model(model)


def hf_decode(hf, prompt: list[int]) -> tuple[list[int], float]:
    start = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="Decode tokens/s: KV cache vs full recomputation vs HF GPT-2.")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=3, help="timings of cache and hf to take the best of")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict = {
        "new_tokens": NEW_TOKENS,
        "batch": 1,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for name, (preset, vocab) in SHAPES.items():
        cfg = build_config(preset, None, [f"vocab_size={vocab}", "dropout=0.0"]).model
        model = build_model(cfg).eval()
        prompt = [1]
        print(
            f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, block_size {cfg.block_size}",
            flush=True,
        )
        hf = to_hf(model)
        if hf is not None:
            with torch.no_grad():
                x = torch.randint(0, vocab, (1, 64))
                assert torch.allclose(hf(x).logits, model(x)[0], atol=1e-4), "HF GPT-2 disagrees with gptlab"
            hf_decode(hf, prompt)  # warm-up: first calls allocate and pick kernels
        decode(model, prompt, True)
        t_cache, t_hf = math.inf, math.inf
        for r in range(args.rounds):
            cached, t = decode(model, prompt, True)
            t_cache = min(t_cache, t)
            line = f"  round {r + 1}: cache {NEW_TOKENS / t:8.1f} tokens/s"
            if hf is not None:
                theirs, t = hf_decode(hf, prompt)
                t_hf = min(t_hf, t)
                line += f" | hf {NEW_TOKENS / t:8.1f} tokens/s"
            print(line, flush=True)
        full, t_full = decode(model, prompt, False)
        print(
            f"  recompute: {NEW_TOKENS / t_full:8.1f} tokens/s; best cache {NEW_TOKENS / t_cache:.1f} tokens/s "
            f"is {t_full / t_cache:.1f}x faster",
            flush=True,
        )
        row = {
            "params": sum(p.numel() for p in model.parameters()),
            "cache_tok_s": round(NEW_TOKENS / t_cache, 1),
            "recompute_tok_s": round(NEW_TOKENS / t_full, 1),
            "speedup": round(t_full / t_cache, 2),
            "same_tokens": cached == full,
        }
        if hf is not None:
            import transformers

            print(
                f"  hf best {NEW_TOKENS / t_hf:.1f} tokens/s: gptlab's cache is {t_hf / t_cache:.2f}x its speed",
                flush=True,
            )
            row |= {
                "hf_tok_s": round(NEW_TOKENS / t_hf, 1),
                "gptlab_vs_hf": round(t_hf / t_cache, 2),
                "hf_same_tokens": theirs == cached,
            }
            results["transformers"] = transformers.__version__
        results[name] = row
    print(json.dumps(results))


if __name__ == "__main__":
    main()
