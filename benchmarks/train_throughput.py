"""CPU training throughput: tokens/s and achieved model FLOP/s as a share of the measured matmul peak.

Two configurations, each with torch.compile off and on, in one run:
  tutorial   the `tutorial` preset (d=64, 4 layers, 4 heads, T=256, B=16, dropout 0.1)
  cpu-small  the classic small CPU config (T=64, B=12, 4 layers, 4 heads, d=128)
The machine is shared, so its speed drifts from one second to the next: each timed training step
is paired with a matmul-peak timing taken right after it (a float32 512x512 matmul for 0.2 s), and
the figure reported is the median over steps of (model FLOP/s of the step) / (peak of its pair).
Beside it a matmul of the model's own MLP shape (B*T x d times d x 4d), the largest product a
step runs, paired the same way: what even a perfect step could reach with such small matrices.

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
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from gptlab.model.accounting import flops_per_token  # noqa: E402
from gptlab.train.bench import setup_bench  # noqa: E402
from gptlab.train.perf import measure_cpu_matmul_peak  # noqa: E402

CONFIGS = ("tutorial", "cpu-small")  # cpu-small is the classic T=64, B=12, 4x4x128 config


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


def paired(preset: str, compile_: str, steps: int, warmup: int) -> dict:
    """Median tokens/s and median fraction of the adjacent matmul peak over `steps` paired timings."""
    bench = setup_bench(preset, "cpu", compile_)
    cfg = bench.cfg
    tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
    fpt = flops_per_token(cfg.model)["train"]
    rows, d = cfg.train.batch_size * cfg.model.block_size, cfg.model.n_embd
    t0 = time.perf_counter()
    for _ in range(warmup):
        bench.step()
    print(
        f"  warm-up ({warmup} steps{', compilation included' if bench.compiled else ''}): "
        f"{time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    rates, fractions, mlp_fractions, peaks = [], [], [], []
    for i in range(steps):
        t = time.perf_counter()
        bench.step()
        rate = tokens / (time.perf_counter() - t)
        peak = measure_cpu_matmul_peak(seconds=0.2)
        mlp = shaped_matmul_flops(rows, d, 4 * d, seconds=0.1)
        rates.append(rate)
        peaks.append(peak)
        fractions.append(rate * fpt / peak)
        mlp_fractions.append(mlp / peak)
        print(
            f"  step {i + 1}/{steps}: {rate:,.0f} tok/s, {rate * fpt / 1e9:.2f} GFLOP/s, "
            f"peak {peak / 1e9:.1f} GFLOP/s -> {fractions[-1]:.2f}",
            flush=True,
        )
    return {
        "tokens_per_sec": round(median(rates), 1),
        "fraction_of_peak": round(median(fractions), 3),
        "peak_gflops": round(median(peaks) / 1e9, 1),
        "mlp_matmul_fraction_of_peak": round(median(mlp_fractions), 3),
        "warmup_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="paired timings per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation included)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    figures: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "configs": {}}
    for preset in CONFIGS:
        entry = {}
        for compile_ in ("off", "on"):
            print(f"--- {preset}, compile {compile_} ---", flush=True)
            entry[f"compile_{compile_}"] = paired(preset, compile_, args.steps, args.warmup)
        entry["compile_speedup"] = round(
            entry["compile_on"]["tokens_per_sec"] / entry["compile_off"]["tokens_per_sec"], 3
        )
        figures["configs"][preset] = entry
        print(
            f"{preset}: compile off {entry['compile_off']['tokens_per_sec']:,.0f} tok/s "
            f"({entry['compile_off']['fraction_of_peak']:.2f} of peak), "
            f"on {entry['compile_on']['tokens_per_sec']:,.0f} "
            f"tok/s ({entry['compile_on']['fraction_of_peak']:.2f}); MLP-shaped matmul reaches "
            f"{entry['compile_off']['mlp_matmul_fraction_of_peak']:.2f} of peak",
            flush=True,
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
