"""Command line: argument parsing only; each subcommand calls one function elsewhere.

Errors a user can cause end as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
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
  gptlab prepare ../shared/data/tang_poems.jsonl --tokenizer bpe --vocab-size 4096 --out data/tang-bpe
  gptlab tokenize --tokenizer cl100k_base "How are you?"
"""


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="raw text -> tokenizer + train/val token shards",
                       description="Turn corpora (built-in names, paths, hf:DATASET[:CONFIG]) into a prepared "
                       "dataset directory. Reads in chunks and encodes in worker processes, so corpora larger "
                       "than memory work; the same inputs and settings give byte-identical files.")
    p.add_argument("corpus", nargs="+", metavar="CORPUS_OR_PATH",
                   help="built-in corpus (shakespeare), .txt/.md/.jsonl/.json[.gz] files or directories, or "
                   "hf:DATASET[:CONFIG] (needs the datasets library)")
    p.add_argument("--tokenizer", default="char", metavar="SPEC",
                   help="char, bpe (trained on the corpus), or a pretrained tiktoken encoding: gpt2, cl100k_base, "
                   "o200k_base, optionally NAME:PATH to its file when offline (default: char)")
    p.add_argument("--vocab-size", type=int, help="bpe vocabulary size, end-of-text token included (default 2048)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of text for validation (default 0.1)")
    p.add_argument("--seed", type=int, default=1337, help="seed for choosing validation documents")
    p.add_argument("--text-field", default="text", help="JSON record field holding the text (default: text)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="encoding processes (default: all cores)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000,
                   help="most token ids per shard file (default 100M)")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> None:
    from gptlab.data.prepare import prepare

    options = {"vocab_size": args.vocab_size} if args.vocab_size is not None else {}
    result = prepare(args.corpus, args.out, args.tokenizer, args.val_fraction, args.seed, args.text_field,
                     options, workers=args.workers, shard_tokens=args.shard_tokens)
    for line in result.skipped.lines():
        print(line)
    splits, tok = result.meta["splits"], result.meta["tokenizer"]
    chars = sum(s["chars"] for s in splits.values())
    tokens = sum(s["tokens"] for s in splits.values())
    shards = sum(len(s["files"]) for s in splits.values())
    print(f"characters: {chars:,}")
    print(f"tokens: {tokens:,} (train {splits['train']['tokens']:,}, val {splits['val']['tokens']:,}; "
          f"documents train {splits['train']['documents']:,}, val {splits['val']['documents']:,})")
    print(f"vocabulary size: {tok['vocab_size']:,} ({tok['kind']} tokenizer, {result.meta['dtype']} ids, "
          f"{chars / max(tokens, 1):.2f} characters per token)")
    print(f"wrote {args.out} ({shards} token file{'s' if shards > 1 else ''})")


def _add_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="show the pieces and ids a tokenizer makes of a text",
                       description="Show each piece of TEXT with its id, in order, the count, and characters "
                       "and bytes per token. The tokenizer is a pretrained encoding (--tokenizer cl100k_base) "
                       "or that of a run or prepared dataset directory (RUN).")
    p.add_argument("--tokenizer", metavar="SPEC", help="gpt2, cl100k_base, o200k_base (NAME:PATH for a local "
                   "encoding file), or a tokenizer.json path")
    p.add_argument("run", nargs="?", metavar="RUN", help="run or dataset directory (instead of --tokenizer)")
    p.add_argument("text", metavar="TEXT", help="the text to tokenize; '-' reads it from stdin")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(func=_run_tokenize)


def _run_tokenize(args: argparse.Namespace) -> None:
    import json

    from gptlab.tokenizers.pieces import describe, format_description, tokenizer_for

    if (args.tokenizer is None) == (args.run is None):
        raise GptlabError("tokenize takes --tokenizer SPEC TEXT or RUN TEXT (quote a text with spaces)")
    text = sys.stdin.read() if args.text == "-" else args.text
    tokenizer = tokenizer_for(spec=args.tokenizer) if args.tokenizer else tokenizer_for(run=args.run)
    info = describe(tokenizer, text)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        print("\n".join(format_description(info)))


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a prepared dataset",
                       description="Train a GPT on a prepared dataset, or resume a run. Config comes from a "
                       "preset, then --config FILE.toml, then key=value overrides (e.g. n_layer=6 lr=3e-4).")
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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_prepare, _add_tokenize, _add_train, _add_sample,
                                                                 _add_info]


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
