"""Hugging Face interop, measured: how exactly exports and imports keep the numbers, and decode speed
of gptlab vs transformers on the same exported weights.

1. max |Δlogit| on a fixed batch (4 x 128 random ids, float32, random weights) for each architecture:
     export   gptlab model -> `export_run` -> AutoModelForCausalLM.from_pretrained: its logits vs gptlab's
     import   a transformers model of that architecture (its own init, saved) -> `import_checkpoint` ->
              gptlab's logits vs transformers'
2. Decode speed at the gpt2-small shape (124M parameters, vocabulary 50257): greedy decoding of
   --new-tokens tokens after a 1-token prompt at batch 1 and 8, gptlab's engine (KV cache) and
   transformers' generate (with its cache) on the same weights, timed alternately, best of --rounds,
   so that load from other work on the machine hits both alike.

    python benchmarks/interop.py [--rounds R] [--new-tokens N] [--threads T]

The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gptlab.config import build_config  # noqa: E402
from gptlab.inference.engine import SamplingParams, generate_steps  # noqa: E402
from gptlab.interop.export import export_run, transformers_model  # noqa: E402
from gptlab.interop.hf_tokenizer import to_hf_tokenizer, tokenizer_config  # noqa: E402
from gptlab.interop.import_hf import import_checkpoint  # noqa: E402
from gptlab.model import build_model  # noqa: E402
from gptlab.runs import CONFIG, TOKENIZER, WEIGHTS, load_run, publish_checkpoint, write_weights  # noqa: E402
from gptlab.tokenizers import BPETokenizer  # noqa: E402

SHAPE = ["n_layer=4", "n_head=4", "n_embd=128", "block_size=128"]
ARCHS = {  # name: gptlab overrides whose export is that architecture
    "gpt2": [],
    "llama": ["position=rope", "norm=rmsnorm", "mlp=swiglu", "bias=false", "tie_embeddings=false"],
    "qwen3": ["position=rope", "norm=rmsnorm", "qk_norm=true", "mlp=relu2", "bias=false", "tie_embeddings=false"],
}
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def randomized(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Every weight drawn (norm gains too), so no part of the map goes untested."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def max_dlogit(hf, ours, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return (hf(ids).logits - ours(ids)[0]).abs().max().item()


def export_error(arch: str, tok: BPETokenizer, root: Path, ids: torch.Tensor) -> float:
    from transformers import AutoModelForCausalLM

    cfg = build_config("cpu-tiny", None, SHAPE + [f"vocab_size={tok.vocab_size}"] + ARCHS[arch])
    model = randomized(build_model(cfg.model))
    run = root / f"{arch}-run"
    run.mkdir()
    tok.save(run / TOKENIZER)
    (run / CONFIG).write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    publish_checkpoint(run, 0, lambda d: (write_weights(model, d / WEIGHTS, 0), [WEIGHTS])[1])
    hf = AutoModelForCausalLM.from_pretrained(export_run(run, root / f"{arch}-export"), local_files_only=True)
    return max_dlogit(hf.eval(), model, ids)


def import_error(arch: str, tok: BPETokenizer, root: Path, ids: torch.Tensor) -> float:
    import transformers as tf

    v = tok.vocab_size
    common = dict(
        vocab_size=v,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    config = {
        "gpt2": lambda: tf.GPT2Config(vocab_size=v, n_positions=128, n_embd=128, n_layer=4, n_head=4),
        "llama": lambda: tf.LlamaConfig(**common),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=32),
    }[arch]()
    hf = randomized(tf.AutoModelForCausalLM.from_config(config), std=0.1)
    src = root / f"{arch}-hf"
    hf.save_pretrained(src)
    to_hf_tokenizer(tok).save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok, 128)), encoding="utf-8")
    run = import_checkpoint(src, root / f"{arch}-imported")
    return max_dlogit(hf, load_run(run).model, ids)


def gptlab_decode(model, batch: int, new_tokens: int) -> float:
    """Seconds for greedy decoding of new_tokens at this batch size."""
    start = time.perf_counter()
    for _ in generate_steps(model, None, [[1]] * batch, SamplingParams(new_tokens, 0.0)):
        pass
    return time.perf_counter() - start


def hf_decode(hf, batch: int, new_tokens: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        hf.generate(
            torch.ones(batch, 1, dtype=torch.long),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Export/import max |Δlogit| per architecture; decode speed "
        "gptlab vs transformers on the same weights."
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating timings to take the best of")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per timing (default 128)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    results: dict = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_before": round(os.getloadavg()[0], 2),
    }
    tok = BPETokenizer.train([SHAKESPEARE.read_text(encoding="utf-8")[:300_000]], vocab_size=512)
    ids = torch.randint(0, tok.vocab_size, (4, 128), generator=torch.Generator().manual_seed(0))
    results["max_abs_dlogit"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            row = {"export": export_error(arch, tok, Path(tmp), ids), "import": import_error(arch, tok, Path(tmp), ids)}
            print(f"{arch}: max |Δlogit| export {row['export']:.2e}, import {row['import']:.2e}", flush=True)
            results["max_abs_dlogit"][arch] = {k: float(f"{v:.3g}") for k, v in row.items()}

    cfg = build_config("gpt2-small", None, ["dropout=0.0"]).model
    model = build_model(cfg).eval()
    hf = transformers_model(model)
    print(
        f"decode: gpt2-small shape, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{args.new_tokens} new tokens, best of {args.rounds} alternating rounds",
        flush=True,
    )
    results["decode"] = {"new_tokens": args.new_tokens, "rounds": args.rounds}
    for batch in (1, 8):
        gptlab_decode(model, batch, 8), hf_decode(hf, batch, 8)  # warm-up: allocations, kernel choices
        best = {"gptlab": math.inf, "hf": math.inf}
        for r in range(args.rounds):
            best["gptlab"] = min(best["gptlab"], t_g := gptlab_decode(model, batch, args.new_tokens))
            best["hf"] = min(best["hf"], t_h := hf_decode(hf, batch, args.new_tokens))
            print(
                f"  batch {batch} round {r + 1}: gptlab {batch * args.new_tokens / t_g:7.1f} tokens/s | "
                f"transformers {batch * args.new_tokens / t_h:7.1f} tokens/s",
                flush=True,
            )
        row = {
            "gptlab_tok_s": round(batch * args.new_tokens / best["gptlab"], 1),
            "hf_tok_s": round(batch * args.new_tokens / best["hf"], 1),
            "gptlab_vs_hf": round(best["hf"] / best["gptlab"], 3),
        }
        print(f"  batch {batch}: gptlab is {row['gptlab_vs_hf']:.2f}x transformers' speed", flush=True)
        results["decode"][f"batch{batch}"] = row
    results["load_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
