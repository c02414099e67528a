"""GPU training figures (needs CUDA; refuses to run without it).

1. gpt2-small (124M) at T=1024, bf16 autocast, torch.compile: tokens/s and MFU against the GPU's
   datasheet bf16 dense peak (goal on one H100: MFU >= 50%).
2. The shakespeare-char GPU config (the `char-gpu` preset: 6 layers, 6 heads, d=384, T=256, B=64,
   dropout 0.2, 5000 steps) on tinyshakespeare: training time until the evaluated val loss first
   reaches <= 1.47 (goal on one H100: <= 45 s). Training time is the trainer's elapsed_s, which
   counts optimizer steps and not the evaluations themselves; total wall time is printed beside it.

    python benchmarks/train_gpu.py [--text tinyshakespeare.txt] [--batch-size 16] [--skip-char]

Ends with one line holding a JSON object of the figures, the device and the torch version.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

TARGET_VAL_LOSS = 1.47
DEFAULT_TEXT = [
    ROOT / "shared" / "data" / "tinyshakespeare.txt",
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
]


def gpt2_small(batch_size: int, steps: int, warmup: int) -> dict:
    """Throughput and MFU of gpt2-small at T=1024, compiled, bf16."""
    from gptlab.train.bench import bench_train, report_lines

    print(f"--- gpt2-small, T=1024, B={batch_size}, compile on ---", flush=True)
    r = bench_train(
        "gpt2-small",
        "cuda",
        steps,
        warmup,
        "on",
        [f"batch_size={batch_size}", "block_size=1024"],
        log=lambda s: print("  " + s, flush=True),
    )
    for line in report_lines(r):
        print("  " + line)
    return {
        k: r[k]
        for k in (
            "tokens_per_sec",
            "step_time_s",
            "mfu",
            "model_flops_per_sec",
            "peak_flops",
            "peak_memory_bytes",
            "precision",
            "compile",
            "batch_size",
            "block_size",
        )
    }


def char_gpu(text: Path) -> dict:
    """Train the char-gpu preset on tinyshakespeare; time to val loss <= TARGET_VAL_LOSS."""
    from gptlab.config import build_config
    from gptlab.data.prepare import prepare
    from gptlab.train.metrics import read_metrics
    from gptlab.train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        prepare([str(text)], data, "char")
        cfg = build_config("char-gpu", None, ["sample_tokens=0", "log_interval=250", "device=cuda"])
        cfg.data = str(data)
        print(
            f"--- char-gpu on {text.name}: {cfg.train.max_steps} steps, target val loss <= {TARGET_VAL_LOSS} ---",
            flush=True,
        )
        t0 = time.perf_counter()
        result = train(cfg, run)
        wall = time.perf_counter() - t0
        evals = [m for m in read_metrics(run / "metrics.jsonl") if "val_loss" in m]
    hit = next((m for m in evals if m["val_loss"] <= TARGET_VAL_LOSS), None)
    figures = {
        "final_val_loss": evals[-1]["val_loss"],
        "steps": result.step,
        "total_wall_s": round(wall, 1),
        "train_time_to_target_s": hit["elapsed_s"] if hit else None,
        "step_at_target": hit["step"] if hit else None,
    }
    print(
        f"  val loss <= {TARGET_VAL_LOSS}: "
        + (
            f"at step {hit['step']} after {hit['elapsed_s']:.1f}s of training"
            if hit
            else f"not reached (final {evals[-1]['val_loss']:.4f})"
        )
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, help="tinyshakespeare.txt (default: shared/data beside the checkout)")
    parser.add_argument("--batch-size", type=int, default=16, help="gpt2-small windows per step (default 16)")
    parser.add_argument("--steps", type=int, default=30, help="timed gpt2-small steps (default 30)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed gpt2-small steps, compilation included")
    parser.add_argument("--skip-char", action="store_true", help="only the gpt2-small throughput")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit(
            "train_gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU"
        )
    text = args.text or next((p for p in DEFAULT_TEXT if p.is_file()), None)
    if not args.skip_char and (text is None or not text.is_file()):
        sys.exit(
            f"train_gpu.py: tinyshakespeare.txt not found ({args.text or ', '.join(map(str, DEFAULT_TEXT))}); "
            "pass --text PATH or --skip-char"
        )
    device = torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    figures = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpt2_small": gpt2_small(args.batch_size, args.steps, args.warmup),
    }
    if not args.skip_char:
        figures["char_gpu"] = char_gpu(text)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
