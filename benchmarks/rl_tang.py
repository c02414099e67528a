"""Benchmark: the whole post-training pipeline on the Tang poems, side by side. One base model and one
fine-tuned (SFT) run, then from that run: DPO (`gptlab align`), RL with the verse reward (`gptlab rl
--reward verse`), and RL with a reward model (`gptlab reward` on verse-ranked pairs, then `gptlab rl
--reward RM`). Each is asked for a five-character poem on the same held-out titles.

1. Poems of at most --max-chars characters; --prompts titles held out of every stage (as
   benchmarks/posttrain_tang.py does, whose split and pretraining this script imports).
2. Instruction records whose prompt names the poem's form: "請用以下題目寫一首五言詩：{title}" for a
   five-character poem, 七言 for a seven-character one, the plain prompt otherwise; DPO pairs ask for
   五言 (chosen: a five-character poem, rejected: a seven-character one); reward-model pairs are ranked
   by the verse checker (`gptlab poem-data --verse-pairs`); RL answers the training titles' prompts.
3. Every model writes one poem per held-out title asked for 五言 (temperature --temperature, the same
   seeds), through the same engine as `gptlab sample` and the RL rollouts.

Figures per model (shares in [0, 1]): ends (the poem ended by itself), regular (verse checker: 4 or 8
lines, all of 5 or all of 7 characters), five_char (every line five characters), verse_score (the
checker's mean score), rhyme (the checker's mean rhyme measure) and val_loss (nats per answer token on
the held-out titles' real poems, so the language itself is not lost); rm_pair_accuracy (the reward
model's held-out pairs). The last line is one JSON object.

    python benchmarks/rl_tang.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gptlab.data.corpora import SkipReport  # noqa: E402
from gptlab.inference.decoding import SamplingParams  # noqa: E402
from gptlab.model.loss import lm_loss  # noqa: E402
from gptlab.posttrain import verse  # noqa: E402
from gptlab.posttrain.examples import collate, encode_example  # noqa: E402
from gptlab.posttrain.poems import (  # noqa: E402
    DEFAULT_TEMPLATE,
    Poem,
    instruction_prompt,
    preference_records,
    read_poems,
    verse_form,
    verse_pair_records,
    write_jsonl,
)
from gptlab.posttrain.rollouts import rollouts  # noqa: E402
from gptlab.posttrain.run import posttrain  # noqa: E402
from gptlab.posttrain.template import ChatTemplate, Message  # noqa: E402
from gptlab.runs import load_run  # noqa: E402
from posttrain_tang import POEMS, pretrain, split_titles  # noqa: E402

TEMPLATES = {
    "five": "請用以下題目寫一首五言詩：{title}",
    "seven": "請用以下題目寫一首七言詩：{title}",
    "other": DEFAULT_TEMPLATE,
}
MODELS = ("sft", "dpo", "rl_verse", "rl_rm")


def ask(poem: Poem) -> str:
    """The prompt for a poem: it names the poem's form."""
    return instruction_prompt(poem, TEMPLATES[verse_form(poem.text)])


def write_poems(
    run: Path, titles: list[str], seed: int, temperature: float, max_new: int
) -> list[tuple[verse.VerseReport, bool]]:
    """One five-character poem asked for per title: each answer's verse report, and whether it ended."""
    loaded = load_run(run, "cpu")
    template = ChatTemplate(loaded.tokenizer)
    prompts = [template.prompt([Message("user", TEMPLATES["five"].format(title=t))]) for t in titles]
    params = SamplingParams(max_new, temperature, seed=seed)
    answers = rollouts(loaded.model, loaded.tokenizer, prompts, 1, params, template.end_id)  # type: ignore[arg-type]
    return [(verse.check(a.text), a.ended) for a in answers]


@torch.no_grad()
def answer_loss(run: Path, poems: list[Poem]) -> float:
    """Nats per answer token (the poem and its end of turn) on these poems, asked for as in training."""
    loaded = load_run(run, "cpu")
    template = ChatTemplate(loaded.tokenizer)
    block, report = loaded.config.model.block_size, SkipReport()
    examples = [
        e
        for p in poems
        if (e := encode_example(template, [Message("user", ask(p)), Message("assistant", p.text)], block, report))
    ]
    nats, count = 0.0, 0
    for i in range(0, len(examples), 32):
        batch = collate(examples[i : i + 32])
        logits, _ = loaded.model(batch.inputs)
        nats += lm_loss(logits, batch.loss_targets(), reduction="sum").item()
        assert batch.loss_mask is not None
        count += int(batch.loss_mask.sum())
    return nats / max(count, 1)


def figures(poems: list[tuple[verse.VerseReport, bool]], val_loss: float) -> dict[str, float]:
    """The shares and means the issue names, for one model's poems."""
    n, reports = len(poems), [r for r, _ in poems]
    return {
        "ends": sum(ended for _, ended in poems) / n,
        "regular": sum(r.regular for r in reports) / n,
        "five_char": sum(bool(r.chars_per_line) and set(r.chars_per_line) == {5} for r in reports) / n,
        "verse_score": sum(r.score for r in reports) / n,
        "rhyme": sum(r.rhyme for r in reports) / n,
        "val_loss": val_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="working directory (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (checks the script)")
    parser.add_argument("--max-chars", type=int, default=64, help="longest poem text kept (default 64)")
    parser.add_argument("--prompts", type=int, default=130, help="titles held out (default 130: >= 100 asked)")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--sft-steps", type=int, default=250)
    parser.add_argument("--dpo-steps", type=int, default=100)
    parser.add_argument("--rm-steps", type=int, default=150)
    parser.add_argument("--rl-steps", type=int, default=120)
    parser.add_argument("--rl-batch", type=int, default=4, help="prompts per RL step")
    parser.add_argument("--group", type=int, default=8, help="answers per prompt")
    parser.add_argument("--rl-lr", type=float, default=1e-4)
    parser.add_argument("--kl", type=float, default=0.04)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=72)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    if args.quick:
        args.pretrain_steps, args.sft_steps, args.dpo_steps, args.rm_steps, args.rl_steps = 30, 20, 6, 6, 4
        args.prompts = 20
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    load_before = os.getloadavg()
    t0 = time.time()
    work = Path(args.out or tempfile.mkdtemp(prefix="rl_tang-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"rl_tang: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average {load_before[0]:.2f}; working in {work}",
        flush=True,
    )
    seconds: dict[str, float] = {}

    def timed(stage: str, start: float) -> None:
        seconds[stage] = round(time.time() - start, 1)
        print(f"    ({stage}: {seconds[stage]:.0f} s)", flush=True)

    poems = [p for p in read_poems([str(POEMS)], SkipReport()) if len(p.text) <= args.max_chars]
    training, titles = split_titles(poems, args.prompts, args.seed)
    held = [p for p in poems if p.title in set(titles)]
    print(f"{len(poems):,} poems; {len(titles)} held-out titles asked for, {len(held)} held-out poems", flush=True)

    print("=== 1. base model (pretraining)", flush=True)
    start = time.time()
    base = pretrain(training, work, args.pretrain_steps)
    timed("pretrain", start)
    sft_data, pairs, verse_pairs = work / "sft.jsonl", work / "pairs.jsonl", work / "verse_pairs.jsonl"
    write_jsonl(sft_data, [{"prompt": ask(p), "response": p.text} for p in training])
    write_jsonl(pairs, preference_records(training, TEMPLATES["five"], seed=args.seed))
    write_jsonl(verse_pairs, verse_pair_records(training, DEFAULT_TEMPLATE, seed=args.seed))
    common = ["checkpoint_interval=100000", "device=cpu", f"seed={args.seed}", "sample_prompts=1"]

    def stage(title: str, kind: str, data: Path, out: str, steps: int, extra: list[str], reward: str | None = None):
        """One post-training run from the SFT run (SFT itself from the base), timed."""
        print(f"=== {title}", flush=True)
        start = time.time()
        source = base if kind == "sft" else work / "sft"
        settings = [*common, f"eval_interval={max(steps // 3, 1)}", *extra]
        posttrain(kind, str(source), str(data), str(work / out), None, settings, steps, reward)  # type: ignore[arg-type]
        timed(out, start)

    stage(
        "2. instruction fine-tuning",
        "sft",
        sft_data,
        "sft",
        args.sft_steps,
        ["lr=1e-3", "min_lr=1e-4", "batch_size=32"],
    )
    stage("3. DPO", "dpo", pairs, "dpo", args.dpo_steps, ["lr=1e-5", "min_lr=1e-6", "batch_size=16", "beta=0.5"])
    stage("4. reward model", "rm", verse_pairs, "rm", args.rm_steps, ["batch_size=16", "held_out=200"])
    rl = [
        f"lr={args.rl_lr}",
        f"min_lr={args.rl_lr / 10}",
        f"batch_size={args.rl_batch}",
        f"group_size={args.group}",
        f"kl={args.kl}",
        f"rollout_tokens={args.max_new_tokens}",
        "log_interval=10",
        "held_out=32",
    ]
    stage("5. RL, verse reward", "rl", sft_data, "rl_verse", args.rl_steps, rl, "verse")
    stage("6. RL, reward model", "rl", sft_data, "rl_rm", args.rl_steps, rl, str(work / "rm"))

    print(f"=== 7. one five-character poem asked for per held-out title ({len(titles)}), each model", flush=True)
    start = time.time()
    results = {}
    for name in MODELS:
        written = write_poems(work / name, titles, args.seed, args.temperature, args.max_new_tokens)
        results[name] = {k: round(v, 4) for k, v in figures(written, answer_loss(work / name, held)).items()}
        r = results[name]
        print(
            f"{name:>8}: ends {r['ends']:.0%}, regular {r['regular']:.0%}, five-character {r['five_char']:.0%}, "
            f"verse score {r['verse_score']:.3f}, rhyme {r['rhyme']:.3f}, val loss {r['val_loss']:.4f}   e.g. "
            f"{titles[0]}: {'/'.join(written[0][0].lines)[:60]!r}",
            flush=True,
        )
    timed("evaluation", start)
    rm_metrics = [json.loads(line) for line in (work / "rm" / "metrics.jsonl").read_text().splitlines()]
    accuracy = [m["pair_accuracy"] for m in rm_metrics if "pair_accuracy" in m][-1]
    load_after = os.getloadavg()
    out = {
        **results,
        "rm_pair_accuracy": round(accuracy, 4),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    print(f"prompts {len(titles)}, seconds {round(time.time() - t0, 1)} by stage {seconds}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
