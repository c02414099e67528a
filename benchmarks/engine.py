"""The figures of issue 22 ("one engine"), side by side in one run, each a ratio of two things timed
in alternation on the same machine (median of the rounds), so that load hits both sides alike:

  one_client_vs_sample         tokens/s of one streaming client of `gptlab serve` (request sent to last
                               token) over tokens/s of `gptlab sample`'s generation (the same function,
                               in this process, start-up not timed): the tutorial preset, same run, same
                               prompt, seed and number of new tokens (goal >= 0.95)
  serve_16_vs_1                tokens/s of 16 concurrent streaming clients on `gptlab serve --max-batch 16`
                               over the same load on `--max-batch 1`, for the tutorial preset and the
                               gpt2-small shape (goal >= 4.0 for each)
  decode_vs_transformers_b1/b8 gptlab's cached greedy decoding over transformers' `generate` on the same
                               weights (exported with `gptlab export --format hf`), gpt2-small shape, a
                               1-token prompt, batch 1 and 8 (goal >= 1.0 for each)
  trace_stage_vs_next          a step-through stage request (POST /api/trace) after the first one for a
                               prompt over POST /api/next for the same prompt, gpt2-small shape, 256
                               tokens (goal <= 0.5)

Runs have random weights (speed does not depend on what was learnt), made as serve_load.py makes them:
the `tutorial` preset (4 layers, 4 heads, 64 wide, block 256, tinyshakespeare's characters) and the
gpt2-small shape (12 layers, 12 heads, 768 wide, block 1024, 50,257 characters). The servers are real
`gptlab serve` processes with the same torch thread count as this process.

    python benchmarks/engine.py [--quick] [--threads N] [--skip sample,serve,decode,trace]

--quick: tiny sizes and one or two rounds (a smaller stand-in for gpt2-small), to check that the script
works; its figures mean nothing. A figure decides a goal only when measured alone on a quiet machine
(see load_average_before_after). The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from serve_load import ROOT, client, load, make_run, start_server  # puts src/ on sys.path

# --- gptlab's Python internals: the only calls into them (everything else goes through the CLI and HTTP) ---


def load_for_generation(run: Path):
    """The run as `gptlab sample` loads it (model in eval mode on the CPU, tokenizer)."""
    from gptlab.runs import load_run

    return load_run(run, "cpu")


def generate(model, tokenizer, prompts: list[list[int]], new_tokens: int, temperature: float, seed: int) -> list[str]:
    """What `gptlab sample` runs to generate (today inference.engine.generate_steps, with the KV cache):
    every prompt continued by new_tokens tokens; each sequence's text ("" without a tokenizer)."""
    from gptlab.inference.engine import SamplingParams, generate_steps

    texts = [""] * len(prompts)
    for steps in generate_steps(model, tokenizer, prompts, SamplingParams(new_tokens, temperature, seed=seed)):
        for step in steps:
            texts[step.seq] += step.text
    return texts


# --- sizes -------------------------------------------------------------------------------------------------

SECTIONS = ("sample", "serve", "decode", "trace")
PROMPT = "ROMEO:"
SEED = 1234
TEMPERATURE = 0.8
CLIENTS = 16
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@dataclass(frozen=True)
class Sizes:
    """How much each section measures."""

    sample_tokens: int = 128  # new tokens per request of the one-client comparison
    sample_rounds: int = 9
    # model -> (new tokens per request, requests per client) of the 16-client load
    serve_load: dict[str, tuple[int, int]] = field(default_factory=lambda: {"tutorial": (32, 4), "gpt2-small": (16, 2)})
    serve_rounds: int = 3
    decode_tokens: int = 128
    decode_rounds: int = 3
    trace_tokens: int = 256  # prompt length (characters: one token each with these runs' tokenizer)
    trace_rounds: int = 5
    gpt2_overrides: list[str] | None = None  # None: serve_load's gpt2-small shape


QUICK = Sizes(
    sample_tokens=16,
    sample_rounds=2,
    serve_load={"tutorial": (4, 1), "gpt2-small": (4, 1)},
    serve_rounds=1,
    decode_tokens=8,
    decode_rounds=1,
    trace_tokens=32,
    trace_rounds=2,
    gpt2_overrides=["n_layer=2", "n_head=2", "n_embd=64", "block_size=1024", "dropout=0.0"],
)


# --- runs and servers ----------------------------------------------------------------------------------------


class Runs:
    """Run directories with random weights, made once when first asked for."""

    def __init__(self, root: Path, sizes: Sizes):
        self.root, self.sizes = root, sizes

    def get(self, name: str) -> Path:
        """The run of this name ("tutorial" or "gpt2-small")."""
        path = self.root / name
        if not path.exists():
            make_run(path, name, self.sizes.gpt2_overrides if name == "gpt2-small" else None)
            print(f"made the {name} run (random weights): {describe(path)}", flush=True)
        return path


def describe(run: Path) -> str:
    """A run's model in words, read from its config."""
    m = json.loads((run / "config.json").read_text(encoding="utf-8"))["model"]
    return (
        f"{m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, block {m['block_size']}, "
        f"vocabulary {m['vocab_size']:,}"
    )


@contextlib.contextmanager
def serving(run: Path, logs: Path, max_batch: int, threads: int) -> Iterator[str]:
    """A `gptlab serve RUN --max-batch N` process for the duration; its base URL."""
    where = Path(tempfile.mkdtemp(prefix=f"{run.name}-b{max_batch}-", dir=logs))
    print(f"starting gptlab serve {run.name} --max-batch {max_batch} ({threads} threads)", flush=True)
    proc, base = start_server(run, where, max_batch, threads)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def alternate(sides: dict[str, tuple[int, Callable[[], float]]], rounds: int) -> dict[str, dict]:
    """Time each side (tokens it makes, a call that returns its seconds) in turn, `rounds` times; per
    side: tokens, the seconds of each round, the median and tokens/s at the median."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        shown = []
        for name, (tokens, timed) in sides.items():
            seconds[name].append(timed())
            shown.append(f"{name} {tokens / seconds[name][-1]:8.1f} tokens/s")
        print(f"  round {r + 1}/{rounds}: " + " | ".join(shown), flush=True)
    result = {}
    for name, (tokens, _) in sides.items():
        median = statistics.median(seconds[name])
        result[name] = {
            "tokens": tokens,
            "seconds": [round(s, 4) for s in seconds[name]],
            "median_s": round(median, 4),
            "tokens_per_s": round(tokens / median, 1),
        }
    return result


def ratio(sides: dict[str, dict], top: str, bottom: str) -> float:
    """tokens/s of one side over the other's, at the medians."""
    return round(sides[bottom]["median_s"] / sides[top]["median_s"] * sides[top]["tokens"] / sides[bottom]["tokens"], 3)


def timed(fn: Callable[[], object]) -> float:
    """Seconds fn takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- sections ------------------------------------------------------------------------------------------------


def stream_completion(http: httpx.Client, body: dict) -> tuple[float, str, str | None]:
    """Seconds from sending a streamed /v1/completions request to its last token; its text and finish reason."""
    start = time.perf_counter()
    last, text, finish = start, "", None
    with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"/v1/completions answered {r.status_code}: {r.read()[:500]!r}")
        for line in r.iter_lines():
            if line.startswith("data: {"):
                last = time.perf_counter()
                chosen = json.loads(line.removeprefix("data: "))["choices"][0]
                text, finish = text + chosen["text"], chosen["finish_reason"] or finish
    return last - start, text, finish


def one_client_vs_sample(runs: Runs, sizes: Sizes, threads: int, logs: Path) -> dict:
    """One streaming client of `gptlab serve` against `gptlab sample`'s generation."""
    run, n = runs.get("tutorial"), sizes.sample_tokens
    print(
        f"one client vs sample: tutorial preset ({describe(run)}), prompt {PROMPT!r}, {n} new tokens, "
        f"temperature {TEMPERATURE}, seed {SEED}, {sizes.sample_rounds} alternating rounds",
        flush=True,
    )
    loaded = load_for_generation(run)
    ids = loaded.tokenizer.encode(PROMPT)
    body = {"prompt": PROMPT, "max_tokens": n, "temperature": TEMPERATURE, "seed": SEED, "stream": True}
    texts: dict[str, str] = {}
    finish: list[str | None] = []

    def sample() -> float:
        start = time.perf_counter()
        texts["sample"] = generate(loaded.model, loaded.tokenizer, [ids], n, TEMPERATURE, SEED)[0]
        return time.perf_counter() - start

    with serving(run, logs, 16, threads) as base, httpx.Client(base_url=base, timeout=600) as http:

        def serve() -> float:
            seconds, texts["serve"], reason = stream_completion(http, body)
            finish.append(reason)
            return seconds

        sample(), serve()  # warm-up: first calls allocate and pick kernels
        sides = alternate({"sample": (n, sample), "serve_one_client": (n, serve)}, sizes.sample_rounds)
    return {
        "one_client_vs_sample": ratio(sides, "serve_one_client", "sample"),
        "one_client": {
            "model": "tutorial preset, random weights: " + describe(run),
            "prompt": PROMPT,
            "new_tokens": n,
            "server": "gptlab serve --max-batch 16 (the default)",
            "same_text": texts["sample"] == texts["serve"],
            "server_finish": sorted({str(f) for f in finish}),
            **sides,
        },
    }


def serve_16_vs_1(runs: Runs, sizes: Sizes, threads: int, logs: Path) -> dict:
    """16 concurrent clients on `--max-batch 16` against the same load on `--max-batch 1`."""
    figures: dict = {"serve_16_vs_1": {}, "serve": {}}
    for name, (n, requests) in sizes.serve_load.items():
        key = name.replace("-", "_")
        figures["serve"][key] = load_both_servers(runs.get(name), n, requests, sizes.serve_rounds, threads, logs)
        figures["serve_16_vs_1"][key] = ratio(figures["serve"][key], "max_batch_16", "max_batch_1")
    return figures


def load_both_servers(run: Path, n: int, requests: int, rounds: int, threads: int, logs: Path) -> dict:
    """CLIENTS clients x `requests` streamed requests of n tokens on both servers, in alternation."""
    print(
        f"serve, {run.name} ({describe(run)}): {CLIENTS} clients x {requests} streamed requests of {n} tokens, "
        f"--max-batch 16 vs 1, {rounds} alternating rounds",
        flush=True,
    )
    errors: list[int] = []

    def timed_load(base: str) -> float:
        start = time.perf_counter()
        errors.append(load(base, CLIENTS, requests, n)["errors"])
        return time.perf_counter() - start

    tokens = CLIENTS * requests * n
    with serving(run, logs, 16, threads) as b16, serving(run, logs, 1, threads) as b1:
        client(b16, 999, 1, n), client(b1, 999, 1, n)  # warm-up
        sides = alternate(
            {"max_batch_16": (tokens, lambda: timed_load(b16)), "max_batch_1": (tokens, lambda: timed_load(b1))},
            rounds,
        )
    if sum(errors):
        print(f"  {sum(errors)} requests failed: the figure counts tokens that were not made", flush=True)
    return {"clients": CLIENTS, "requests_per_client": requests, "new_tokens": n, "errors": sum(errors), **sides}


def export_hf(run: Path, out: Path) -> Path:
    """`gptlab export RUN --format hf --out OUT`."""
    subprocess.run(
        [sys.executable, "-m", "gptlab", "export", str(run), "--format", "hf", "--out", str(out)],
        check=True,
        env=os.environ | {"PYTHONPATH": str(ROOT / "src")},
    )
    return out


def decode_vs_transformers(runs: Runs, sizes: Sizes, threads: int, logs: Path) -> dict:
    """gptlab's cached greedy decoding against transformers' generate on the exported weights."""
    import transformers

    transformers.logging.set_verbosity_error()  # its max_length notice at every generate call
    transformers.logging.disable_progress_bar()
    run, n = runs.get("gpt2-small"), sizes.decode_tokens
    print(
        f"decode vs transformers {transformers.__version__}: gpt2-small shape ({describe(run)}), greedy, "
        f"1-token prompt, {n} new tokens, {sizes.decode_rounds} alternating rounds; exporting with gptlab export",
        flush=True,
    )
    exported = export_hf(run, logs / "gpt2-small-hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported, local_files_only=True).eval()
    model = load_for_generation(run).model
    figures: dict = {"decode": {"new_tokens": n, "prompt_tokens": 1, "transformers": transformers.__version__}}
    for batch in (1, 8):
        sides = decode_batch(model, hf, batch, n, sizes.decode_rounds)
        figures[f"decode_vs_transformers_b{batch}"] = ratio(sides, "gptlab", "transformers")
        figures["decode"][f"batch{batch}"] = sides
    return figures


def decode_batch(model, hf, batch: int, n: int, rounds: int) -> dict:
    """Both sides decoding n tokens greedily after a 1-token prompt, `batch` sequences, in alternation."""
    from interop import hf_decode

    prompts = [[1]] * batch  # transformers' side: torch.ones(batch, 1)
    generate(model, None, prompts, 8, 0.0, SEED), hf_decode(hf, batch, 8)  # warm-up
    print(f" batch {batch}", flush=True)
    return alternate(
        {
            "gptlab": (batch * n, lambda: timed(lambda: generate(model, None, prompts, n, 0.0, SEED))),
            "transformers": (batch * n, lambda: hf_decode(hf, batch, n)),
        },
        rounds,
    )


def post(http: httpx.Client, route: str, body: dict) -> tuple[float, dict]:
    """Seconds a JSON POST takes, and its answer."""
    start = time.perf_counter()
    r = http.post(route, json=body)
    seconds = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"{route} answered {r.status_code}: {r.text[:500]}")
    return seconds, r.json()


def trace_stage_vs_next(runs: Runs, sizes: Sizes, threads: int, logs: Path) -> dict:
    """Step-through stage requests after the first against /api/next, same prompt."""
    run = runs.get("gpt2-small")
    text = SHAKESPEARE.read_text(encoding="utf-8")[: sizes.trace_tokens]
    with serving(run, logs, 16, threads) as base, httpx.Client(base_url=base, timeout=600) as http:
        post(http, "/api/next", {"text": text})  # warm-up
        first, overview = post(http, "/api/trace", {"text": text, "stage": 0})
        names = [s["name"] for s in overview["stages"]]
        count = len(overview["tokens"])
        print(
            f"trace vs next: gpt2-small shape ({describe(run)}), prompt of {count} tokens, {len(names)} stages; "
            f"first /api/trace {first:.3f} s; then {sizes.trace_rounds} alternating rounds",
            flush=True,
        )
        # Stages spread over the whole pass (the first was stage 0).
        stages = [1 + (len(names) - 2) * (r + 1) // sizes.trace_rounds for r in range(sizes.trace_rounds)]
        seconds: dict[str, list[float]] = {"next": [], "trace_stage": []}
        for r, stage in enumerate(stages):
            seconds["next"].append(post(http, "/api/next", {"text": text})[0])
            seconds["trace_stage"].append(post(http, "/api/trace", {"text": text, "stage": stage})[0])
            print(
                f"  round {r + 1}/{len(stages)}: /api/next {seconds['next'][-1]:.3f} s | "
                f"/api/trace stage {stage} ({names[stage]}) {seconds['trace_stage'][-1]:.3f} s",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "trace_stage_vs_next": round(med["trace_stage"] / med["next"], 3),
        "trace": {
            "prompt_tokens": count,
            "stages": len(names),
            "first_trace_s": round(first, 4),
            "stage_names": [names[s] for s in stages],
            "worst_stage_vs_next": round(max(seconds["trace_stage"]) / med["next"], 3),
            **{k: {"seconds": [round(s, 4) for s in v], "median_s": round(med[k], 4)} for k, v in seconds.items()},
        },
    }


# --- the run -------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The processor's name, as the kernel gives it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


GOALS = {
    "one_client_vs_sample": ">= 0.95",
    "serve_16_vs_1": ">= 4.0 each",
    "decode_vs_transformers_b1": ">= 1.0",
    "decode_vs_transformers_b8": ">= 1.0",
    "trace_stage_vs_next": "<= 0.5",
}


def main() -> None:
    parser = argparse.ArgumentParser(description="The figures of issue 22 (one engine), side by side in one run.")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and rounds: checks it works (figures mean nothing)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads here and in the servers (default: torch's)"
    )
    parser.add_argument("--skip", default="", help=f"comma list of sections to skip ({','.join(SECTIONS)})")
    args = parser.parse_args()
    skip = [s for s in args.skip.split(",") if s]
    if unknown := set(skip) - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))} (known: {', '.join(SECTIONS)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    sizes = QUICK if args.quick else Sizes()
    figures: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "quick": args.quick,
        "skipped": skip,
        "load_average_before_after": [round(os.getloadavg()[0], 2)],
        **{key: None for key in GOALS},
    }
    print(
        f"{figures['date']}: {figures['cpu']} ({figures['cpus']} CPUs), torch {torch.__version__}, "
        f"{threads} threads, load average {figures['load_average_before_after'][0]}"
        f"{'; QUICK: the figures mean nothing' if args.quick else ''}",
        flush=True,
    )
    sections = {
        "sample": one_client_vs_sample,
        "serve": serve_16_vs_1,
        "decode": decode_vs_transformers,
        "trace": trace_stage_vs_next,
    }
    failed = {}
    with tempfile.TemporaryDirectory(prefix="gptlab-engine-") as tmp:
        runs = Runs(Path(tmp) / "runs", sizes)
        for name, section in sections.items():
            if name in skip:
                continue
            try:
                figures |= section(runs, sizes, threads, Path(tmp))
            except Exception as exc:  # one broken section keeps the others' figures
                traceback.print_exc()
                failed[name] = f"{type(exc).__name__}: {exc}"
    figures["load_average_before_after"].append(round(os.getloadavg()[0], 2))
    if failed:
        figures["failed"] = failed
    for key, goal in GOALS.items():
        print(f"{key}: {figures[key]} (goal {goal})", flush=True)
    print(json.dumps(figures))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
