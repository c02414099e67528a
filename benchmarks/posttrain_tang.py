"""Benchmark: after pretraining, on the Tang poems. A base model, the same model fine-tuned on
title -> poem instructions (`gptlab finetune`), and that one aligned with DPO to prefer
five-character poems (`gptlab align`), asked for poems on held-out titles with the same prompts
and seeds.

1. Poems whose text is at most --max-chars characters (so a prompt and its poem fit T=128); --prompts titles are held
   out (every poem
   with one of those titles is left out of pretraining, fine-tuning and alignment).
2. Pretrain a small char model on the other poems (the cpu-modern recipe, --pretrain-steps)
   (or take --run, a base run of your own).
3. `gptlab poem-data` records -> finetune -> align, each with its own schedule.
4. Each model writes one poem per held-out title: "請用以下題目寫一首詩：{title}", temperature
   --temperature, seed s + i, at most --max-new-tokens tokens. The base model gets the same text
   followed by a newline (it has no chat template) and ends by itself when it writes the corpus's
   document separator; the chat models end by themselves when they write <|end|>.

Figures: the share of outputs that end by themselves before the token limit, the share that are
regulated verse (every line the same length, 5 or 7 characters, plus punctuation), and the share
of five-character poems before and after DPO (the corpus share for reference).

    python benchmarks/posttrain_tang.py [--quick] [--run BASE_RUN] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gptlab.config import build_config  # noqa: E402
from gptlab.data.corpora import SkipReport  # noqa: E402
from gptlab.data.prepare import CHAR_SEPARATOR, prepare  # noqa: E402
from gptlab.inference.engine import SamplingParams, generate_steps  # noqa: E402
from gptlab.posttrain.poems import (
    DEFAULT_TEMPLATE,
    Poem,
    instruction_prompt,
    instruction_records,  # noqa: E402
    preference_records,
    read_poems,
    verse_form,
    write_jsonl,
)
from gptlab.posttrain.run import posttrain  # noqa: E402
from gptlab.posttrain.template import END, ChatTemplate, Message, has_chat_tokens  # noqa: E402
from gptlab.runs import load_run  # noqa: E402
from gptlab.train.trainer import train  # noqa: E402

POEMS = ROOT.parent / "shared" / "data" / "tang_poems.jsonl"


def split_titles(poems: list[Poem], n: int, seed: int) -> tuple[list[Poem], list[str]]:
    """Training poems and the held-out titles: n drawn (no training poem has one of them), of which
    those whose characters all occur in the training poems are asked for (a char model trained on
    them can read those prompts)."""
    titles = sorted({p.title for p in poems})
    held = set(random.Random(seed).sample(titles, n))
    training = [p for p in poems if p.title not in held]
    seen = set(DEFAULT_TEMPLATE).union(*(set(p.title + p.author + p.text) for p in training))
    return training, sorted(t for t in held if set(t) <= seen)


def pretrain(poems: list[Poem], work: Path, steps: int) -> Path:
    """A small char model on the training poems (as `gptlab prepare` reads poem records). The
    prompt template's text is one more document, so the char vocabulary can encode it."""
    corpus = work / "pretrain.jsonl"
    write_jsonl(corpus, [{"title": p.title, "author": p.author, "paragraphs": p.lines} for p in poems])
    (work / "template.txt").write_text(DEFAULT_TEMPLATE.format(title=""), encoding="utf-8")
    data = work / "data-char"
    prepare([str(corpus), str(work / "template.txt")], data, "char", workers=1, progress=False)
    # The demo's recipe (cpu-modern: 4 layers, d=128, T=128, RoPE, Muon, WSD), sized to the budget.
    cfg = build_config(
        "cpu-modern",
        None,
        [
            f"max_steps={steps}",
            "eval_interval=400",
            "checkpoint_interval=100000",
            "sample_tokens=0",
            "log_interval=100",
            "device=cpu",
        ],
    )
    cfg.data = str(data)
    train(cfg, work / "base")
    return work / "base"


def write_poems(run: Path, titles: list[str], seed: int, temperature: float, max_new: int) -> list[dict]:
    """One poem per title; returns text, whether it ended by itself, its verse form."""
    loaded = load_run(run, "cpu")
    tok = loaded.tokenizer
    requests = [instruction_prompt(Poem(t, "", []), DEFAULT_TEMPLATE) for t in titles]
    if has_chat_tokens(tok):
        template = ChatTemplate(tok)
        rows, stop = [template.prompt([Message("user", r)]) for r in requests], END
    else:
        rows, stop = [tok.encode(r + "\n") for r in requests], (CHAR_SEPARATOR if tok.eot_id is None else None)
    texts, finish = [""] * len(rows), ["length"] * len(rows)
    params = SamplingParams(max_new, temperature, stop=[stop] if stop else [], seed=seed)
    eot = tok.eot_id
    for steps in generate_steps(loaded.model, tok, rows, params):
        for s in steps:
            if eot is not None and s.token == eot and finish[s.seq] == "length":
                finish[s.seq] = "stop"
            texts[s.seq] += s.text
            finish[s.seq] = s.finish if s.finish == "stop" else finish[s.seq]
    return [
        {"title": t, "text": x, "ended": f == "stop", "form": verse_form(x)} for t, x, f in zip(titles, texts, finish)
    ]


def shares(outputs: list[dict]) -> dict[str, float]:
    """Percentages: ended by themselves, regulated verse, five-character."""
    n = len(outputs)
    return {
        "ends_pct": 100 * sum(o["ended"] for o in outputs) / n,
        "regular_pct": 100 * sum(o["form"] != "other" for o in outputs) / n,
        "five_char_pct": 100 * sum(o["form"] == "five" for o in outputs) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a base run to start from (char or any tokenizer) instead of pretraining")
    parser.add_argument("--out", help="working directory (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (checks the script)")
    parser.add_argument("--max-chars", type=int, default=64, help="longest poem text kept (default 64)")
    parser.add_argument("--prompts", type=int, default=100, help="held-out titles asked for (default 100)")
    parser.add_argument("--pretrain-steps", type=int, default=1200)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--dpo-steps", type=int, default=150)
    parser.add_argument("--sft-batch", type=int, default=32, help="records per fine-tuning step")
    parser.add_argument("--dpo-batch", type=int, default=16, help="pairs per alignment step")
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--dpo-lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    if args.quick:
        args.pretrain_steps, args.sft_steps, args.dpo_steps, args.prompts = 30, 20, 10, 20
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    load_before = os.getloadavg()
    t0 = time.time()
    work = Path(args.out or tempfile.mkdtemp(prefix="posttrain_tang-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"posttrain_tang: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, load average {load_before[0]:.2f}; working in {work}",
        flush=True,
    )

    report = SkipReport()
    poems = [p for p in read_poems([str(POEMS)], report) if len(p.text) <= args.max_chars]
    training, titles = split_titles(poems, args.prompts, args.seed)
    corpus_five = 100 * sum(verse_form(p.text) == "five" for p in training) / len(training)
    print(
        f"{len(poems):,} poems of at most {args.max_chars} characters; {args.prompts} titles held out, {len(titles)} "
        "of them in the training poems' characters; "
        f"five-character share of the training poems {corpus_five:.1f}%",
        flush=True,
    )

    print("=== 1. base model", flush=True)
    base = Path(args.run) if args.run else pretrain(training, work, args.pretrain_steps)
    sft_data, pairs = work / "sft.jsonl", work / "pairs.jsonl"
    write_jsonl(sft_data, instruction_records(training))
    write_jsonl(pairs, preference_records(training, seed=args.seed))
    common = ["sample_prompts=1", "checkpoint_interval=100000", "device=cpu", f"seed={args.seed}"]
    print("=== 2. instruction fine-tuning (gptlab finetune)", flush=True)
    posttrain(
        "sft",
        str(base),
        str(sft_data),
        str(work / "sft"),
        None,
        common
        + [
            f"lr={args.sft_lr}",
            f"min_lr={args.sft_lr / 10}",
            f"batch_size={args.sft_batch}",
            f"eval_interval={max(args.sft_steps // 4, 1)}",
        ],
        args.sft_steps,
    )
    print("=== 3. preference alignment (gptlab align, DPO)", flush=True)
    posttrain(
        "dpo",
        str(work / "sft"),
        str(pairs),
        str(work / "dpo"),
        None,
        common
        + [
            f"lr={args.dpo_lr}",
            f"min_lr={args.dpo_lr / 10}",
            f"batch_size={args.dpo_batch}",
            f"beta={args.beta}",
            f"eval_interval={max(args.dpo_steps // 4, 1)}",
        ],
        args.dpo_steps,
    )

    print(
        f"=== 4. {len(titles)} poems on held-out titles from each model (seed {args.seed}, "
        f"temperature {args.temperature}, at most {args.max_new_tokens} tokens)",
        flush=True,
    )
    results = {}
    for name, run in (("base", base), ("sft", work / "sft"), ("dpo", work / "dpo")):
        outputs = write_poems(run, titles, args.seed, args.temperature, args.max_new_tokens)
        results[name] = shares(outputs)
        (work / f"poems_{name}.jsonl").write_text(
            "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs), encoding="utf-8"
        )
        r = results[name]
        print(
            f"{name:>4}: ends by itself {r['ends_pct']:.0f}%, regulated verse {r['regular_pct']:.0f}%, "
            f"five-character {r['five_char_pct']:.0f}%   e.g. {outputs[0]['title']}: "
            f"{outputs[0]['text'][:60]!r}",
            flush=True,
        )
    dpo_metrics = [json.loads(line) for line in (work / "dpo" / "metrics.jsonl").read_text().splitlines()]
    last_eval = [m for m in dpo_metrics if "preference_accuracy" in m][-1]
    load_after = os.getloadavg()
    figures = {
        "base_ends_pct": results["base"]["ends_pct"],
        "sft_ends_pct": results["sft"]["ends_pct"],
        "dpo_ends_pct": results["dpo"]["ends_pct"],
        "base_regular_pct": results["base"]["regular_pct"],
        "sft_regular_pct": results["sft"]["regular_pct"],
        "dpo_regular_pct": results["dpo"]["regular_pct"],
        "corpus_five_char_pct": round(corpus_five, 1),
        "five_char_pct_before_dpo": results["sft"]["five_char_pct"],
        "five_char_pct_after_dpo": results["dpo"]["five_char_pct"],
        "dpo_heldout_preference_accuracy_pct": round(100 * last_eval["preference_accuracy"], 1),
        "dpo_heldout_reward_margin": round(last_eval["reward_margin"], 3),
        "prompts": len(titles),
        "base_steps": load_run(base).step,
        "sft_steps": args.sft_steps,
        "sft_batch": args.sft_batch,
        "dpo_steps": args.dpo_steps,
        "dpo_batch": args.dpo_batch,
        "seconds": round(time.time() - t0, 1),
        "load_avg_before": round(load_before[0], 2),
        "load_avg_after": round(load_after[0], 2),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
