"""Command line: argument parsing only; each subcommand calls one function elsewhere.

Errors a user can cause end as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from gptlab import __version__
from gptlab.errors import GptlabError

EXAMPLES = """\
examples:
  gptlab prepare shakespeare --tokenizer char --out data/shakespeare-char
  gptlab train --data data/shakespeare-char --out runs/demo --preset cpu-tiny
  gptlab sample runs/demo --prompt "ROMEO:" --max-new-tokens 300
  gptlab info --preset gpt2-small
  gptlab bench train --preset cpu-small
  torchrun --standalone --nproc_per_node=8 -m gptlab train --data DIR --out RUN --preset gpt2-small
"""


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="raw text -> tokenizer + train/val token files",
                       description="Turn corpora (built-in names or paths) into a prepared dataset directory.")
    p.add_argument("corpus", nargs="+", metavar="CORPUS_OR_PATH",
                   help="built-in corpus (shakespeare) or .txt/.md/.jsonl/.json[.gz] files or directories")
    p.add_argument("--tokenizer", default="char", help="tokenizer kind (default: char)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of text for validation (default 0.1)")
    p.add_argument("--seed", type=int, default=1337, help="seed for choosing validation documents")
    p.add_argument("--text-field", default="text", help="JSON record field holding the text (default: text)")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> None:
    from gptlab.data.prepare import prepare

    result = prepare(args.corpus, args.out, args.tokenizer, args.val_fraction, args.seed, args.text_field)
    for line in result.skipped.lines():
        print(line)
    splits, tok = result.meta["splits"], result.meta["tokenizer"]
    chars = sum(s["chars"] for s in splits.values())
    tokens = sum(s["tokens"] for s in splits.values())
    print(f"characters: {chars:,}")
    print(f"tokens: {tokens:,} (train {splits['train']['tokens']:,}, val {splits['val']['tokens']:,}; "
          f"documents train {splits['train']['documents']:,}, val {splits['val']['documents']:,})")
    print(f"vocabulary size: {tok['vocab_size']:,} ({tok['kind']} tokenizer, {result.meta['dtype']} ids)")
    print(f"wrote {args.out}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a prepared dataset",
                       description="Train a GPT on a prepared dataset, or resume a run. Config comes from a "
                       "preset, then --config FILE.toml, then key=value overrides (e.g. n_layer=6 lr=3e-4). "
                       "Several GPUs or nodes: launch with `torchrun --nproc_per_node=N -m gptlab train ...` "
                       "(DDP; add fsdp=true to shard the model); compile=on|off|auto, device=cpu|cuda|mps.")
    p.add_argument("--data", help="prepared dataset directory (from `gptlab prepare`)")
    p.add_argument("--out", help="run directory to write")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint")
    p.add_argument("--preset", help="named model size (default cpu-tiny; see `gptlab info --list`)")
    p.add_argument("--config", help="TOML file with [model] and [train] sections")
    p.add_argument("--max-steps", type=int, help="number of optimizer steps")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config field overrides")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gptlab.config import build_config
    from gptlab.train.trainer import train

    if args.resume:
        if args.data or args.out or args.preset or args.config or args.overrides:
            raise GptlabError("--resume RUN takes no --data/--out/--preset/--config/overrides "
                              "(the run keeps its own); only --max-steps may extend it")
        result = train(None, args.resume, resume=True, max_steps=args.max_steps)
    else:
        if not args.data or not args.out:
            raise GptlabError("train needs --data DIR and --out RUN (or --resume RUN)")
        overrides = list(args.overrides) + ([f"max_steps={args.max_steps}"] if args.max_steps is not None else [])
        cfg = build_config(args.preset, args.config, overrides)
        cfg.data = str(Path(args.data).resolve())
        result = train(cfg, args.out)
    return 130 if result.interrupted else 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Continue a prompt with a trained run; text streams as it is generated.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (argmax)")
    p.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="keep the smallest set with probability >= P")
    p.add_argument("--seed", type=int, default=None, help="same seed, same text")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> None:
    from gptlab.inference.generate import print_samples

    print_samples(args.run, args.prompt.replace("\\n", "\n"), args.num_samples, args.max_new_tokens,
                  args.temperature, args.top_k, args.top_p, args.seed, args.device)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameter count and FLOPs of a preset, without training",
                       description="Print a model's parameter breakdown and FLOPs per token.")
    p.add_argument("--preset", default="cpu-tiny")
    p.add_argument("--vocab-size", type=int, help="vocabulary size (char presets have none of their own)")
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config field overrides")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    from gptlab.config import build_config
    from gptlab.model.accounting import describe
    from gptlab.model.presets import PRESETS

    if args.list:
        for name, values in PRESETS.items():
            print(f"{name:12s} n_layer={values['n_layer']} n_head={values['n_head']} "
                  f"n_embd={values['n_embd']} block_size={values['block_size']}")
        return
    overrides = list(args.overrides) + ([f"vocab_size={args.vocab_size}"] if args.vocab_size else [])
    cfg = build_config(args.preset, None, overrides)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = 65
        print("note: this preset takes its vocabulary from the dataset; assuming 65 (tinyshakespeare's "
              "characters). Pass --vocab-size V to change it.")
    for line in describe(cfg.model):
        print(line)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure training speed: tokens/s, step time, MFU, peak memory",
                       description="Benchmarks. `bench train`: a short warm-up, then timed training steps of a "
                       "preset on random tokens (no dataset needed).")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    t = what.add_parser("train", help="time training steps of a preset",
                        description="Warm-up steps, then timed optimizer steps exactly as `gptlab train` runs them; "
                        "prints tokens/s, step time, model FLOP/s, MFU and peak memory.")
    t.add_argument("--preset", required=True, help="named model size (see `gptlab info --list`)")
    t.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    t.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    t.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    t.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the model (auto: on for CUDA, off on CPU)")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config field overrides (batch_size=4 ...)")
    t.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> None:
    from gptlab.train.bench import bench_train, report_lines

    result = bench_train(args.preset, args.device, args.steps, args.warmup, args.compile, args.overrides)
    for line in report_lines(result):
        print(line)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_prepare, _add_train, _add_sample, _add_info,
                                                                _add_bench]


def build_parser() -> argparse.ArgumentParser:
    """The gptlab argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="gptlab", description="Pretrain GPT-style language models from raw "
                                     "text, and put them to use.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gptlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `gptlab` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    try:
        code = args.func(args)
    except GptlabError as exc:
        print(f"gptlab: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("gptlab: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)  # output piped into e.g. `head`, which stopped reading
    sys.exit(code or 0)
