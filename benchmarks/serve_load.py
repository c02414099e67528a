"""Load on `gptlab serve`: the batched server against the turn-taking one (`--max-batch 1`), side by side.

Two run directories with random weights (serving speed does not depend on what was learnt): the
`tutorial` preset (4x4x64, block 256, character vocabulary of tinyshakespeare) and a
gpt2-small-shaped model (12x12x768, block 1024, 50,257-entry vocabulary: the tinyshakespeare
characters padded with CJK ideographs, since GPT-2's BPE files cannot be fetched offline). For
each model and each server, 1, 4, 16 and 64 concurrent clients send streamed completion requests
one after another (both servers with one torch thread; SERVE_LOAD_THREADS=N to change);
measured: requests/s, tokens/s, p50/p95 time to first token and total latency,
errors, and the server's peak resident memory. The last line is a JSON object with the figures.

    python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
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

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gptlab.config import build_config  # noqa: E402
from gptlab.fileio import atomic_write_json  # noqa: E402
from gptlab.model import build_model  # noqa: E402
from gptlab.runs import CONFIG, TOKENIZER, WEIGHTS, save_weights  # noqa: E402
from gptlab.tokenizers import CharTokenizer  # noqa: E402

CLIENTS = (1, 4, 16, 64)
# model -> (preset overrides, new tokens per request, requests per client, batched server's --max-batch)
MODELS = {
    "tutorial": (["dropout=0.0"], 32, 4, 64),
    # 16 rows of a 1024-token KV cache for 12 layers of 768: 1.2 GB, the bound on its memory.
    "gpt2-small": (["n_layer=12", "n_head=12", "n_embd=768", "block_size=1024", "dropout=0.0"], 10, 1, 16),
}
PROMPT = "ROMEO:"
# One intra-op thread for both servers: on a shared, loaded 2-core machine two threads per process spin
# against each other and every step gets tens of times slower (measured: 4 ms vs 129 ms per step).
THREADS = os.environ.get("SERVE_LOAD_THREADS", "1")
GPT2_VOCAB = 50257


def make_run(path: Path, name: str, overrides: list[str] | None = None) -> None:
    """A run directory with random weights (overrides: the preset's, instead of MODELS[name]'s)."""
    text = (ROOT.parent / "shared" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    if name == "gpt2-small":  # pad the alphabet to GPT-2's vocabulary size with CJK ideographs
        chars += [chr(0x20000 + i) for i in range(GPT2_VOCAB - len(chars))]
    tokenizer = CharTokenizer("".join(chars))
    overrides = MODELS[name][0] if overrides is None else overrides
    cfg = build_config("tutorial", None, overrides + [f"vocab_size={tokenizer.vocab_size}"])
    torch.manual_seed(0)
    path.mkdir(parents=True)
    atomic_write_json(path / CONFIG, cfg.to_dict())
    tokenizer.save(path / TOKENIZER)
    save_weights(build_model(cfg.model), path / WEIGHTS, step=0)


def start_server(run: Path, logs: Path, max_batch: int, threads: int | None = None) -> tuple[subprocess.Popen, str]:
    """`gptlab serve RUN --max-batch N` on a free port, with `threads` torch threads (default THREADS);
    the process and its base URL once /health answers."""
    out = open(logs / "stdout", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptlab", "serve", str(run), "--port", "0", "--max-batch", str(max_batch)],
        stdout=out,
        stderr=open(logs / "stderr", "w"),
        env=os.environ | {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads or THREADS)},
    )
    deadline = time.time() + 180
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


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return round(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024, 1)


def client(base: str, index: int, requests: int, max_tokens: int) -> list[tuple[float, float, int] | None]:
    """(time to first token, total latency, tokens) of each of this client's requests; None: an error."""
    results = []
    with httpx.Client(base_url=base, timeout=600) as http:
        for j in range(requests):
            body = {
                "prompt": PROMPT,
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "seed": index * 100 + j,
                "stream": True,
            }
            start, first, tokens = time.perf_counter(), None, 0
            try:
                with http.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        results.append(None)
                        continue
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            first = first or time.perf_counter()
                            tokens += 1  # one event per generated token
            except httpx.HTTPError:
                results.append(None)
                continue
            results.append((first - start, time.perf_counter() - start, tokens))
    return results


def load(base: str, clients: int, requests: int, max_tokens: int) -> dict:
    """clients concurrent clients, each sending `requests` requests one after another."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(lambda i: client(base, i, requests, max_tokens), range(clients)) for r in rs]
    wall = time.perf_counter() - start
    ok = [r for r in results if r is not None]

    def pct(values: list[float], q: int) -> float:
        return (
            round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)
            if len(values) > 1
            else round(values[0], 3)
        )

    ttft, total = [r[0] for r in ok], [r[1] for r in ok]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "requests_per_s": round(len(ok) / wall, 2),
        "tokens_per_s": round(sum(r[2] for r in ok) / wall, 1),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p95_s": pct(ttft, 95),
        "latency_p50_s": pct(total, 50),
        "latency_p95_s": pct(total, 95),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options; --help says what it does
    figures: dict = {
        "load_before": os.getloadavg()[0],
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": int(THREADS),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (_, max_tokens, requests, max_batch) in MODELS.items():
            run = Path(tmp) / name
            make_run(run, name)
            for mode, batch in (("batched", max_batch), ("turn_taking", 1)):
                logs = Path(tmp) / f"{name}-{mode}"
                logs.mkdir()
                print(f"{name}: gptlab serve --max-batch {batch} ({mode}), {max_tokens} tokens per request", flush=True)
                proc, base = start_server(run, logs, batch)
                try:
                    client(base, 999, 1, max_tokens)  # warm-up
                    rows = []
                    for clients in CLIENTS:
                        row = load(base, clients, requests, max_tokens)
                        row["peak_rss_mb"] = peak_rss_mb(proc.pid)
                        print(
                            f"  {clients:3d} clients: {row['requests_per_s']} req/s, {row['tokens_per_s']} tok/s, "
                            f"TTFT p50/p95 {row['ttft_p50_s']}/{row['ttft_p95_s']} s, latency p50/p95 "
                            f"{row['latency_p50_s']}/{row['latency_p95_s']} s, {row['errors']} errors, "
                            f"peak RSS {row['peak_rss_mb']} MB",
                            flush=True,
                        )
                        rows.append(row)
                    figures[f"{name}_{mode}"] = rows
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
            for clients in (1, 16):
                b = next(r for r in figures[f"{name}_batched"] if r["clients"] == clients)
                t = next(r for r in figures[f"{name}_turn_taking"] if r["clients"] == clients)
                figures[f"{name}_tokens_per_s_ratio_at_{clients}"] = round(b["tokens_per_s"] / t["tokens_per_s"], 2)
            print(
                f"{name}: batched / turn-taking tokens/s at 16 clients: "
                f"{figures[f'{name}_tokens_per_s_ratio_at_16']}x; at 1 client: "
                f"{figures[f'{name}_tokens_per_s_ratio_at_1']}x",
                flush=True,
            )
    figures["load_after"] = os.getloadavg()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
