"""Char vs bpe at equal training time on tinyshakespeare, compared in bits per byte.

Loss per token depends on the tokenizer (a bpe token carries ~3 characters, a char token one), so
the two are compared in bits per byte of validation text: val loss (nats/token) / ln 2 / (bytes per
token of the val split). Both models have the cpu-tiny shape (4 layers, 4 heads, d=128, T=128);
each first runs CALIBRATION_STEPS steps to measure its speed, then trains for as many steps as fit
in the same time budget. The val split is the same text for both (the last ~10% of the file).
torch runs on one thread: on a shared machine a step's time is then far steadier.

    python benchmarks/char_vs_bpe.py [--seconds 150] [--vocab-size 1024]

Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "data"

import torch  # noqa: E402

from gptlab.config import build_config  # noqa: E402
from gptlab.data.loader import Dataset  # noqa: E402
from gptlab.data.prepare import prepare  # noqa: E402
from gptlab.data.units import bits_per  # noqa: E402
from gptlab.train.metrics import read_metrics  # noqa: E402
from gptlab.train.trainer import train  # noqa: E402

CALIBRATION_STEPS = 10
QUIET = ["eval_interval=100000", "checkpoint_interval=100000", "sample_tokens=1", "log_interval=50"]


def run(data: Path, out: Path, steps: int) -> dict:
    """Train cpu-tiny on data for `steps` steps (output kept short); returns the last metrics record
    with the final evaluation."""
    cfg = build_config("cpu-tiny", None, [f"max_steps={steps}", f"warmup_steps={max(1, steps // 15)}", *QUIET])
    cfg.data = str(data)
    with contextlib.redirect_stdout(io.StringIO()):
        train(cfg, out)
    records = read_metrics(out / "metrics.jsonl")
    return {
        "final": next(r for r in reversed(records) if "val_loss" in r),
        "elapsed_s": max(r["elapsed_s"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150, help="training time per model (default 150)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="bpe vocabulary size (default 1024)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gptlab-char-vs-bpe-") as tmp:
        work = Path(tmp)
        for kind, options in (("char", {}), ("bpe", {"vocab_size": args.vocab_size})):
            data = work / f"data-{kind}"
            prepare([str(SHARED / "tinyshakespeare.txt")], data, kind, tokenizer_options=options, progress=False)
            dataset = Dataset(data)
            calibration = run(data, work / f"calibrate-{kind}", CALIBRATION_STEPS)
            seconds_per_step = calibration["elapsed_s"] / CALIBRATION_STEPS
            steps = max(CALIBRATION_STEPS, int(args.seconds / seconds_per_step))
            print(
                f"{kind}: vocabulary {dataset.tokenizer.vocab_size:,}, {seconds_per_step * 1000:.0f} ms/step, "
                f"training {steps} steps (~{args.seconds:.0f} s)...",
                flush=True,
            )
            result = run(data, work / f"run-{kind}", steps)
            val_loss = result["final"]["val_loss"]
            val = dataset.splits["val"]
            bytes_per_token = val["bytes"] / val["tokens"]
            bpb = bits_per(val_loss, val, "bytes")
            figures[kind] = {
                "vocab_size": dataset.tokenizer.vocab_size,
                "steps": steps,
                "train_s": round(result["elapsed_s"], 1),
                "val_loss_nats_per_token": round(val_loss, 4),
                "val_bytes_per_token": round(bytes_per_token, 3),
                "val_bits_per_byte": round(bpb, 4),
                "val_text_bytes": dataset.splits["val"]["bytes"],
            }
            print(
                f"  {kind}: val loss {val_loss:.3f} nats/token, {bytes_per_token:.2f} bytes/token "
                f"-> {bpb:.3f} bits per byte after {result['elapsed_s']:.0f} s",
                flush=True,
            )
    ratio = figures["bpe"]["val_bits_per_byte"] / figures["char"]["val_bits_per_byte"]
    print(f"bpe / char bits per byte: {ratio:.3f} (below 1: bpe predicts the text better in the same time)")
    print(json.dumps({"seconds_each": args.seconds, **figures, "bpe_over_char_bpb": round(ratio, 4)}))


if __name__ == "__main__":
    main()
