"""Load on `gptlab serve`: requests/s and latency percentiles for 16 concurrent clients.

Builds a run with random weights of the `tutorial` preset (character vocabulary of tinyshakespeare),
starts `gptlab serve` on a free localhost port, and has 16 client threads send completion requests
(32 new tokens each) as fast as answers come back. The last line is a JSON object with the figures.

    python benchmarks/serve_load.py
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fastapi
import httpx
import torch
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gptlab.config import build_config  # noqa: E402
from gptlab.fileio import atomic_write_json  # noqa: E402
from gptlab.model import build_model  # noqa: E402
from gptlab.runs import CONFIG, TOKENIZER, WEIGHTS, save_weights  # noqa: E402
from gptlab.tokenizers import CharTokenizer  # noqa: E402

CLIENTS, REQUESTS_PER_CLIENT, MAX_TOKENS = 16, 8, 32


def make_run(path: Path) -> None:
    """A run directory with random weights: serving speed does not depend on what was learnt."""
    text = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
    tokenizer = CharTokenizer(text.read_text(encoding="utf-8") if text.is_file() else
                              "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    cfg = build_config("tutorial", None, [f"vocab_size={tokenizer.vocab_size}"])
    torch.manual_seed(0)
    path.mkdir(parents=True)
    atomic_write_json(path / CONFIG, cfg.to_dict())
    tokenizer.save(path / TOKENIZER)
    save_weights(build_model(cfg.model), path / WEIGHTS, step=0)


def start_server(run: Path, logs: Path) -> tuple[subprocess.Popen, str]:
    out = open(logs / "stdout", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gptlab", "serve", str(run), "--port", "0"],
                            stdout=out, stderr=open(logs / "stderr", "w"),
                            env=os.environ | {"PYTHONPATH": str(ROOT / "src")})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        found = re.search(r"http://127\.0\.0\.1:(\d+)", (logs / "stdout").read_text())
        if found:
            base = f"http://127.0.0.1:{found.group(1)}"
            try:
                httpx.get(base + "/health", timeout=5).raise_for_status()
                return proc, base
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {(logs / 'stderr').read_text()[-2000:]}")


def client(base: str, index: int) -> list[float]:
    """Latencies (s) of this client's requests, one after another."""
    latencies = []
    with httpx.Client(base_url=base, timeout=300) as http:
        for j in range(REQUESTS_PER_CLIENT):
            body = {"prompt": "ROMEO:", "max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": index * 100 + j}
            start = time.perf_counter()
            r = http.post("/v1/completions", json=body)
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)
    return latencies


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run, logs = Path(tmp) / "run", Path(tmp)
        make_run(run)
        print("starting gptlab serve on a random-weight tutorial-preset run", flush=True)
        proc, base = start_server(run, logs)
        try:
            client(base, 999)  # warm-up
            print(f"{CLIENTS} clients x {REQUESTS_PER_CLIENT} requests of {MAX_TOKENS} tokens against {base}",
                  flush=True)
            start = time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                latencies = [t for ts in pool.map(lambda i: client(base, i), range(CLIENTS)) for t in ts]
            wall = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    qs = statistics.quantiles(latencies, n=100)
    result = {"clients": CLIENTS, "requests": len(latencies), "max_tokens": MAX_TOKENS,
              "requests_per_s": round(len(latencies) / wall, 2),
              "tokens_per_s": round(len(latencies) * MAX_TOKENS / wall, 1),
              "p50_s": round(qs[49], 3), "p95_s": round(qs[94], 3), "wall_s": round(wall, 1),
              "torch": torch.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__}
    print(f"{result['requests_per_s']} requests/s, {result['tokens_per_s']} tokens/s, "
          f"latency p50 {result['p50_s']} s, p95 {result['p95_s']} s", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
