"""What the page's "Train on this" view costs on the demo model (the cpu-modern preset, 0.8 M parameters,
block 128): the time of one POST /api/train-step (one training step on a window of block_size characters, with
the before and after tables) against the next-token panel's /api/next, the first call's (which also copies
the run's weights and optimizer state), and decoding's tokens/s alone and while lesson steps run beside it.

The run is RUN when given (runs/demo after `make demo`), else the demo preset trained here for 2 steps on
tinyshakespeare (the cost does not depend on the weights).

    python benchmarks/lesson_step.py [--run RUN] [--repeat 5]

Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fastapi.testclient import TestClient  # noqa: E402

from gptlab.config import build_config  # noqa: E402
from gptlab.data.prepare import prepare  # noqa: E402
from gptlab.serve.app import create_app  # noqa: E402
from gptlab.train.trainer import train  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def demo_run(work: Path) -> Path:
    """The demo preset trained for 2 steps on tinyshakespeare (a demo-shaped run, quickly)."""
    print("preparing tinyshakespeare and training the demo preset for 2 steps ...", flush=True)
    prepare([str(SHAKESPEARE)], work / "data", "char")
    cfg = build_config("cpu-modern", None, ["max_steps=2", "eval_batches=1", "sample_tokens=0", "device=cpu"])
    cfg.data = str(work / "data")
    train(cfg, work / "run")
    return work / "run"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def decode_rate(client: TestClient, tokens: int) -> float:
    """Tokens/s of one greedy completion of `tokens` tokens."""
    seconds, answer = timed(
        lambda: client.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": tokens, "temperature": 0})
    )
    return answer.json()["usage"]["completion_tokens"] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run to serve (default: the demo preset trained here for 2 steps)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls of each kind, median kept (default 5)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per completion when timing decoding")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else demo_run(Path(tmp))
        app = create_app(run, device="cpu")
        params = sum(p.numel() for p in app.state.run.model.parameters())
        block = app.state.run.config.model.block_size
        window = SHAKESPEARE.read_text(encoding="utf-8")[1000 : 1000 + block + 1]
        print(
            f"run {run}: {params:,} parameters, block {block}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
        with TestClient(app) as client:
            first, _ = timed(lambda: client.post("/api/train-step", json={"text": window}))
            print(f"first /api/train-step (the lesson's copy made): {first:.3f} s", flush=True)
            steps, engine_ms, nexts = [], [], []
            for _ in range(args.repeat):
                seconds, answer = timed(lambda: client.post("/api/train-step", json={"text": window}).json())
                steps.append(seconds)
                engine_ms.append(answer["step_ms"])
                nexts.append(timed(lambda: client.post("/api/next", json={"text": window}))[0])
            step, nxt = statistics.median(steps), statistics.median(nexts)
            print(
                f"/api/train-step, one step on {block} positions: {step:.3f} s (median of {args.repeat}; "
                f"the step itself {statistics.median(engine_ms):.0f} ms); /api/next: {nxt:.3f} s",
                flush=True,
            )

            alone = statistics.median(decode_rate(client, args.tokens) for _ in range(args.repeat))
            stop = threading.Event()

            def keep_training() -> None:
                while not stop.is_set():
                    client.post("/api/train-step", json={"text": window})

            beside = threading.Thread(target=keep_training)
            beside.start()
            try:
                during = statistics.median(decode_rate(client, args.tokens) for _ in range(args.repeat))
            finally:
                stop.set()
                beside.join()
            print(f"decoding: {alone:.1f} tokens/s alone, {during:.1f} tokens/s while lesson steps run", flush=True)

    print(
        json.dumps(
            {
                "parameters": params,
                "positions": block,
                "first_call_seconds": round(first, 3),
                "train_step_seconds": round(step, 3),
                "train_step_engine_ms": round(statistics.median(engine_ms), 1),
                "next_seconds": round(nxt, 4),
                "train_step_over_next": round(step / nxt, 2),
                "decode_tokens_per_s_alone": round(alone, 1),
                "decode_tokens_per_s_beside_lesson": round(during, 1),
                "decode_kept": round(during / alone, 3),
                "load_before": round(load_before, 2),
                "load_after": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
