"""Benchmark: the classic small character model on tinyshakespeare, on the CPU.

char tokenizer, T=64, B=12, 4 layers, 4 heads, d=128, 2000 steps, lr 1e-3 (warm-up 100, cosine to
1e-4), AdamW beta2=0.99, no dropout, 90/10 split. Prints the final val loss (over 200 batches),
wall time, tokens/s, and the ratio of the model's achieved FLOP/s to the float32 matmul FLOP/s
measured in the same run. Target: val loss <= 1.90.

    python benchmarks/shakespeare_char_cpu.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gptlab.config import build_config  # noqa: E402
from gptlab.data.prepare import prepare  # noqa: E402
from gptlab.model.accounting import flops_per_token  # noqa: E402
from gptlab.train.perf import measure_cpu_matmul_peak  # noqa: E402
from gptlab.train.trainer import train  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    print("measuring float32 matmul FLOP/s (1024 x 1024)...")
    peak = measure_cpu_matmul_peak(size=1024, seconds=2.0)
    print(f"  {peak / 1e9:.1f} GFLOP/s")

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        print(f"preparing {DATA} (char tokenizer, 90/10 split)...")
        prepare([str(DATA)], data, "char", val_fraction=0.1)
        cfg = build_config(
            "cpu-small",
            None,
            [
                f"max_steps={args.steps}",
                "eval_interval=100000",
                "eval_batches=200",
                "log_interval=100",
                "checkpoint_interval=100000",
                "sample_prompt=ROMEO:",
                "sample_tokens=200",
            ],
        )
        cfg.data = str(data)
        print(f"training {args.steps} steps: T=64, B=12, 4 layers, 4 heads, d=128...")
        t0 = time.perf_counter()
        result = train(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]

    train_s = max(m["elapsed_s"] for m in metrics)  # time spent in training steps (no evaluation)
    tokens = args.steps * cfg.train.batch_size * cfg.model.block_size
    tokens_per_sec = tokens / train_s
    model_flops = flops_per_token(cfg.model)["train"] * tokens_per_sec
    figures = {
        "val_loss": round(result.last_eval["val"], 4),
        "wall_s": round(wall, 1),
        "train_s": round(train_s, 1),
        "tokens_per_sec": round(tokens_per_sec),
        "model_gflops": round(model_flops / 1e9, 1),
        "matmul_gflops": round(peak / 1e9, 1),
        "matmul_ratio": round(model_flops / peak, 3),
        "steps": args.steps,
        "torch": torch.__version__,
    }
    print(
        f"final val loss {figures['val_loss']} (target <= 1.90), wall {figures['wall_s']} s, "
        f"{figures['tokens_per_sec']:,} tokens/s, model {figures['model_gflops']} GFLOP/s = "
        f"{figures['matmul_ratio']:.2f} x measured matmul"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
