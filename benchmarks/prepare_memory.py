"""Peak memory and time per GB of `gptlab prepare` on a generated corpus of at least 2 GB.

The corpus is made here, in a temporary directory, by repeating and shuffling the shared texts
(tinyshakespeare's speeches and the Tang poems) into documents of a few kB, written as .jsonl
files. A BPE tokenizer is first trained on tinyshakespeare and 2,000 of the poems (BPE training
on all the poems takes minutes here, and is measured by tokenize_throughput.py); the big corpus
is then prepared with it (`--tokenizer DIR/tokenizer.json`), all cores encoding. Peak memory is the peak
of the summed resident memory of prepare and its worker processes, sampled from /proc. The
generated corpus and the prepared data are deleted at the end.

    python benchmarks/prepare_memory.py [--gb 2.0] [--vocab-size 2048]

Last line: one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FILES = 8  # the corpus is spread over this many .jsonl files


def shared_pieces() -> list[str]:
    """Speeches of tinyshakespeare and whole Tang poems: the units documents are built from."""
    speeches = [s for s in (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if s.strip()]
    poems = []
    for line in (SHARED / "tang_poems.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        poems.append("\n".join([record.get("title", ""), record.get("author", ""), *record["paragraphs"]]))
    return speeches + poems


def generate(directory: Path, target_bytes: int, seed: int = 0) -> tuple[int, int]:
    """Write documents of 2-8 kB of shuffled pieces until target_bytes; returns (bytes, documents)."""
    pieces = shared_pieces()
    rng = random.Random(seed)
    written = documents = 0
    handles = [open(directory / f"part-{i:02d}.jsonl", "w", encoding="utf-8") for i in range(FILES)]
    try:
        order: list[int] = []
        while written < target_bytes:
            doc, size = [], rng.randint(2000, 8000)
            while sum(len(p) for p in doc) < size:
                if not order:
                    order = list(range(len(pieces)))
                    rng.shuffle(order)
                doc.append(pieces[order.pop()])
            line = json.dumps({"text": "\n\n".join(doc)}, ensure_ascii=False) + "\n"
            handles[documents % FILES].write(line)
            written += len(line.encode("utf-8"))
            documents += 1
            if documents % 50_000 == 0:
                print(f"  generated {written / 1e9:.2f} GB, {documents:,} documents", flush=True)
    finally:
        for handle in handles:
            handle.close()
    return written, documents


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        children.setdefault(int(fields["PPid"].strip()), []).append(int(entry))
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float, int]:
    """Run cmd, sampling its process tree's memory; returns (exit code, seconds, peak bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        time.sleep(0.2)
    return proc.returncode, time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="corpus size to generate (default 2.0 GB)")
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    gptlab = [sys.executable, "-m", "gptlab"]
    work = Path(tempfile.mkdtemp(prefix="gptlab-prepare-memory-"))
    try:
        print(f"training a bpe tokenizer (vocab {args.vocab_size}) on the shared texts...", flush=True)
        poems = work / "poems.jsonl"
        poems.write_text(
            "".join((SHARED / "tang_poems.jsonl").open(encoding="utf-8").readlines()[:2000]), encoding="utf-8"
        )
        subprocess.run(
            [
                *gptlab,
                "prepare",
                str(SHARED / "tinyshakespeare.txt"),
                str(poems),
                "--tokenizer",
                "bpe",
                "--vocab-size",
                str(args.vocab_size),
                "--out",
                str(work / "tok"),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        corpus = work / "corpus"
        corpus.mkdir()
        print(f"generating a {args.gb:.1f} GB corpus in {corpus} ...", flush=True)
        t0 = time.perf_counter()
        nbytes, documents = generate(corpus, int(args.gb * 1e9))
        print(
            f"generated {nbytes / 1e9:.2f} GB, {documents:,} documents in {time.perf_counter() - t0:.0f} s", flush=True
        )
        workers = os.cpu_count() or 1
        cmd = [
            *gptlab,
            "prepare",
            str(corpus),
            "--tokenizer",
            str(work / "tok" / "tokenizer.json"),
            "--out",
            str(work / "data"),
            "--workers",
            str(workers),
        ]
        print("running: " + " ".join(cmd[2:]), flush=True)
        code, seconds, peak = run_measured(cmd, env)
        if code != 0:
            sys.exit(f"prepare failed with exit code {code}")
        meta = json.loads((work / "data" / "meta.json").read_text())
        tokens = sum(s["tokens"] for s in meta["splits"].values())
        shards = sum(len(s["files"]) for s in meta["splits"].values())
        figures = {
            "corpus_gb": round(nbytes / 1e9, 3),
            "documents": documents,
            "tokens": tokens,
            "shards": shards,
            "workers": workers,
            "seconds": round(seconds, 1),
            "seconds_per_gb": round(seconds / (nbytes / 1e9), 1),
            "mb_per_s": round(nbytes / 1e6 / seconds, 2),
            "peak_rss_mb": round(peak / 2**20, 1),
            "under_1gb": peak < 2**30,
        }
        print(
            f"prepare of {figures['corpus_gb']} GB: {seconds:.0f} s ({figures['seconds_per_gb']} s per GB, "
            f"{figures['mb_per_s']} MB/s), peak memory {figures['peak_rss_mb']} MB "
            f"({'under' if figures['under_1gb'] else 'OVER'} 1 GB), {tokens:,} tokens in {shards} shards"
        )
        print(json.dumps(figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        print(f"deleted {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
