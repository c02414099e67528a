"""CPU training throughput: tokens/s and achieved model FLOP/s as a share of the measured matmul peak.

Two configurations, each with torch.compile off and on, in one run:
  tutorial   the `tutorial` preset (d=64, 4 layers, 4 heads, T=256, B=16, dropout 0.1)
  cpu-small  the classic small CPU config (T=64, B=12, 4 layers, 4 heads, d=128)
Beside the square-matmul peak (what MFU is measured against) it times a matmul of the model's own
MLP shape (B*T x d times d x 4d), the largest product a training step runs: its FLOP/s bound what
the step can reach however little else the step did.

    python benchmarks/train_throughput.py [--steps N] [--warmup N]

Ends with one line holding a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from gptlab.config import build_config  # noqa: E402
from gptlab.train.bench import bench_train  # noqa: E402
from gptlab.train.perf import measure_cpu_matmul_peak  # noqa: E402

CONFIGS = {"tutorial": [], "cpu-small": []}


def shaped_matmul_flops(rows: int, inner: int, cols: int, seconds: float = 0.5) -> float:
    """Best FLOP/s of (rows x inner) @ (inner x cols) in float32 over short repeated timings."""
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(8):
            a @ b
        best = max(best, 8 * 2 * rows * inner * cols / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    figures: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "configs": {}}
    for preset, overrides in CONFIGS.items():
        cfg = build_config(preset, None, overrides)
        rows, d = cfg.train.batch_size * cfg.model.block_size, cfg.model.n_embd
        mlp = shaped_matmul_flops(rows, d, 4 * d)
        print(f"{preset}: MLP-shaped matmul ({rows}x{d} @ {d}x{4 * d}) {mlp / 1e9:.1f} GFLOP/s")
        entry = {"mlp_matmul_flops": mlp}
        for compile_ in ("off", "on"):
            print(f"--- {preset}, compile {compile_} ---")
            t0 = time.perf_counter()
            r = bench_train(preset, "cpu", args.steps, args.warmup, compile_, overrides,
                            log=lambda s: print("  " + s, flush=True))
            peak = measure_cpu_matmul_peak()  # again after the run: the machine is shared, keep the higher
            peak = max(peak, r["peak_flops"])
            ratio = r["model_flops_per_sec"] / peak
            print(f"  {r['tokens_per_sec']:,.0f} tok/s, {r['step_time_s'] * 1e3:.1f} ms/step, "
                  f"{r['model_flops_per_sec'] / 1e9:.2f} GFLOP/s = {ratio:.2f} of the matmul peak "
                  f"{peak / 1e9:.1f} GFLOP/s ({time.perf_counter() - t0:.0f}s incl. warm-up)", flush=True)
            entry[f"compile_{compile_}"] = {
                "tokens_per_sec": round(r["tokens_per_sec"], 1), "step_time_ms": round(r["step_time_s"] * 1e3, 2),
                "model_gflops": round(r["model_flops_per_sec"] / 1e9, 3), "peak_gflops": round(peak / 1e9, 2),
                "fraction_of_peak": round(ratio, 3)}
        entry["mlp_matmul_fraction_of_peak"] = round(mlp / max(entry["compile_off"]["peak_gflops"],
                                                                 entry["compile_on"]["peak_gflops"]) / 1e9, 3)
        entry["mlp_matmul_flops"] = round(mlp / 1e9, 2)
        entry["compile_speedup"] = round(entry["compile_on"]["tokens_per_sec"] / entry["compile_off"]["tokens_per_sec"], 3)
        figures["configs"][preset] = entry
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
