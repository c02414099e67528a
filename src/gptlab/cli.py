"""Command line: argument parsing only; each subcommand calls one function elsewhere.

Errors a user can cause end as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from gptlab import __version__
from gptlab.errors import GptlabError, describe_os_error

EXAMPLES = """\
examples:
  gptlab prepare shakespeare --tokenizer char --out data/shakespeare-char
  gptlab train --data data/shakespeare-char --out runs/demo --preset cpu-tiny
  gptlab sample runs/demo --prompt "ROMEO:" --max-new-tokens 300
  gptlab eval runs/demo
  gptlab trace runs/demo --prompt "ROMEO:" --position 3
  gptlab step runs/demo --text "ROMEO: But soft" --steps 5
  gptlab serve runs/demo --port 8000
  gptlab info --preset gpt2-small
  gptlab plot runs/demo && gptlab report runs/demo
  gptlab prepare tang-poems --tokenizer bpe --vocab-size 4096 --out data/tang-bpe
  gptlab tokenize --tokenizer cl100k_base "How are you?"
  gptlab bench train --preset cpu-small
  gptlab export runs/demo --format hf --out exports/demo
  gptlab import exports/demo --out runs/imported
  gptlab couplets tang-poems --out data/couplets.jsonl && gptlab prepare data/couplets.jsonl --pairs --out data/couplets
  gptlab train --data data/couplets --out runs/couplets arch=encdec && gptlab sample runs/couplets --source 秦川雄帝宅
  torchrun --standalone --nproc_per_node=8 -m gptlab train --data DIR --out RUN --preset gpt2-small
  gptlab poem-data ../shared/data/tang_poems.jsonl --instructions sft.jsonl --preferences pairs.jsonl
  gptlab finetune --from runs/demo-zh --data sft.jsonl --out runs/zh-sft
  gptlab align --from runs/zh-sft --data pairs.jsonl --out runs/zh-dpo beta=0.1
  gptlab rl --from runs/zh-sft --prompts sft.jsonl --reward verse --out runs/zh-rl
  gptlab chat runs/zh-dpo
  gptlab verse "白日依山盡，黃河入海流。欲窮千里目，更上一層樓。" --json
  gptlab poem-data ../shared/data/tang_poems.jsonl --verse-pairs verse-pairs.jsonl
  gptlab reward --from runs/zh-sft --data verse-pairs.jsonl --out runs/zh-rm
"""


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="raw text -> tokenizer + train/val token shards",
        description="Turn corpora (built-in names, paths, hf:DATASET[:CONFIG]) into a prepared "
        "dataset directory. Reads in chunks and encodes in worker processes, so corpora larger "
        "than memory work; the same inputs and settings give byte-identical files.",
    )
    p.add_argument(
        "corpus",
        nargs="+",
        metavar="CORPUS_OR_PATH",
        help="built-in corpus (shakespeare, tang-poems), .txt/.md/.jsonl/.json[.gz] files or directories, or "
        "hf:DATASET[:CONFIG] (needs the datasets library)",
    )
    p.add_argument(
        "--tokenizer",
        default="char",
        metavar="SPEC",
        help="char, bpe (trained on the corpus), or a pretrained tiktoken encoding: gpt2, cl100k_base, "
        "o200k_base, optionally NAME:PATH to its file when offline (default: char)",
    )
    p.add_argument("--vocab-size", type=int, help="bpe vocabulary size, end-of-text token included (default 2048)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of text for validation (default 0.1)")
    p.add_argument("--seed", type=int, default=1337, help="seed for choosing validation documents")
    p.add_argument("--text-field", default="text", help="JSON record field holding the text (default: text)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes (default: all cores)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="most token ids per shard file (default 100M)")
    p.add_argument(
        "--pairs",
        action="store_true",
        help='records are {"source": ..., "target": ...} pairs: write a dataset of pairs, which '
        "arch=encdec trains on (and a GPT, reading source then target; loss on the target only)",
    )
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> None:
    from gptlab.data.prepare import prepare

    options = {"vocab_size": args.vocab_size} if args.vocab_size is not None else {}
    if args.pairs:
        return _run_prepare_pairs(args, options)
    result = prepare(
        args.corpus,
        args.out,
        args.tokenizer,
        args.val_fraction,
        args.seed,
        args.text_field,
        options,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
    )
    for line in result.skipped.lines():
        print(line)
    splits, tok = result.meta["splits"], result.meta["tokenizer"]
    chars = sum(s["chars"] for s in splits.values())
    tokens = sum(s["tokens"] for s in splits.values())
    shards = sum(len(s["files"]) for s in splits.values())
    print(f"characters: {chars:,}")
    print(
        f"tokens: {tokens:,} (train {splits['train']['tokens']:,}, val {splits['val']['tokens']:,}; "
        f"documents train {splits['train']['documents']:,}, val {splits['val']['documents']:,})"
    )
    print(
        f"vocabulary size: {tok['vocab_size']:,} ({tok['kind']} tokenizer, {result.meta['dtype']} ids, "
        f"{chars / max(tokens, 1):.2f} characters per token)"
    )
    print(f"wrote {args.out} ({shards} token file{'s' if shards > 1 else ''})")


def _run_prepare_pairs(args: argparse.Namespace, options: dict) -> None:
    from gptlab.data.pairs import prepare_pairs

    meta, skipped = prepare_pairs(args.corpus, args.out, args.tokenizer, args.val_fraction, args.seed, options)
    for line in skipped.lines():
        print(line)
    splits = meta["splits"]
    print(
        f"pairs: train {splits['train']['pairs']:,}, val {splits['val']['pairs']:,} | vocabulary size: "
        f"{meta['tokenizer']['vocab_size']:,} ({meta['tokenizer']['kind']} tokenizer)"
    )
    print(f"wrote {args.out}")


def _add_couplets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "couplets",
        help="poem records -> JSONL couplets (first line -> second) for --pairs",
        description="Build the couplet task (對句) from poem records in chinese-poetry's shape "
        '({"paragraphs": ["秦川雄帝宅，函谷壯皇居。", ...]}): every couplet\'s first line becomes a '
        'source and its second line the target, written as JSONL {"source", "target"}.',
    )
    p.add_argument("poems", nargs="+", metavar="POEMS", help="tang-poems, or .jsonl/.json[.gz] files or directories")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.set_defaults(func=_run_couplets)


def _run_couplets(args: argparse.Namespace) -> None:
    from gptlab.data.couplets import write_couplets

    result = write_couplets(args.poems, args.out)
    for line in result.skipped.lines():
        print(line)
    print(f"wrote {args.out}: {result.pairs:,} couplets from {result.poems:,} poems")


def _add_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenize",
        help="show the pieces and ids a tokenizer makes of a text",
        description="Show each piece of TEXT with its id, in order, the count, and characters "
        "and bytes per token. The tokenizer is a pretrained encoding (--tokenizer cl100k_base) "
        "or that of a run or prepared dataset directory (RUN).",
    )
    p.add_argument(
        "--tokenizer",
        metavar="SPEC",
        help="gpt2, cl100k_base, o200k_base (NAME:PATH for a local encoding file), or a tokenizer.json path",
    )
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
    p = sub.add_parser(
        "train",
        help="train a model on a prepared dataset",
        description="Train a GPT on a prepared dataset, or resume a run. Config comes from a "
        "preset, then --config FILE.toml, then key=value overrides (e.g. n_layer=6 lr=3e-4). "
        "Several GPUs or nodes: launch with `torchrun --nproc_per_node=N -m gptlab train ...` "
        "(DDP; add fsdp=true to shard the model); compile=on|off|auto, device=cpu|cuda|mps. "
        "The modern recipe: --preset cpu-modern, or the switches position=rope norm=rmsnorm "
        "qk_norm=true mlp=relu2|swiglu tie_embeddings=false zero_init=true logit_softcap=C "
        "value_embeds=true resid_mix=true smear=true optimizer=muon schedule=wsd final_lr_frac=F "
        "seq_len_start=T0 batch_size_start=B0 ramp_fraction=F "
        "(docs: reference/configuration.md). arch=encdec trains the "
        "encoder–decoder on a dataset of pairs (`prepare --pairs`; docs: concepts/model.md).",
    )
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
            raise GptlabError(
                "--resume RUN takes no --data/--out/--preset/--config/overrides "
                "(the run keeps its own); only --max-steps may extend it"
            )
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
    p = sub.add_parser(
        "sample",
        help="generate text from a trained run",
        description="Continue a prompt with a trained run; text streams as it is generated. "
        "The prompt is prefilled once, then each token is decoded with a KV cache; several "
        "samples are generated together in one batch.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline; \\n is a newline)")
    p.add_argument(
        "--source",
        metavar="TEXT",
        help="encoder–decoder runs (arch=encdec): the source to write a "
        "target for (the encoder reads it once; the decoder samples with a KV cache)",
    )
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (argmax)")
    p.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="keep the smallest set with probability >= P")
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 makes tokens already in the context less likely (default 1: off)",
    )
    p.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="end a sample before this text (repeatable)"
    )
    p.add_argument("--seed", type=int, default=None, help="same seed, same text (sample i uses seed + i)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument(
        "--show-probs",
        type=int,
        default=0,
        metavar="K",
        help="after each token, print the top K candidates with their probabilities",
    )
    p.add_argument("--json", action="store_true", help="with --show-probs: one JSON object per step")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole context every step (slow; same tokens as with the cache)",
    )
    p.add_argument(
        "--step",
        type=int,
        metavar="N",
        help="sample from the weights the run kept at step N of its history (see `gptlab info --run RUN`)",
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> None:
    from gptlab.commands.sample import print_samples
    from gptlab.inference.decoding import SamplingParams

    params = SamplingParams(
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.repetition_penalty,
        [s.replace("\\n", "\n") for s in args.stop],
        args.seed,
    )
    if args.source is not None:
        from gptlab.commands.sample import print_translations

        if args.show_probs or args.json:
            raise GptlabError("--show-probs and --json go with --prompt, not --source")
        return print_translations(
            args.run,
            args.source.replace("\\n", "\n"),
            params,
            args.num_samples,
            args.device,
            not args.no_cache,
            args.step,
        )
    print_samples(
        args.run,
        args.prompt.replace("\\n", "\n"),
        params,
        args.num_samples,
        args.device,
        args.show_probs,
        args.json,
        not args.no_cache,
        args.step,
    )


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="loss, perplexity and bits per byte over a whole dataset split",
        description="Evaluate a trained run on every token of a dataset split (by default the "
        "validation split of the dataset it trained on).",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", help="prepared dataset directory (default: the run's own)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--batch-size", type=int, default=0, help="windows per forward pass (default: automatic)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> None:
    from gptlab.commands.evaluate import print_evaluation

    print_evaluation(args.run, args.data, args.split, args.batch_size, args.device, args.json)


def _add_trace(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trace",
        help="every intermediate of one forward pass, from token ids to probabilities",
        description="Run the model once on a prompt and show every stage the data flows "
        "through, as the model's own modules compute it: token ids, embeddings, and per "
        "block the norm, q, k, v per head, attention scores, mask, softmax weights, "
        "weighted values, projection, residual, MLP and its activation; then the final "
        "norm, logits and probabilities. One line per stage: name, module, shape, the "
        "values at one position, mean/std/min/max.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--prompt", required=True, help="text to trace (\\n is a newline); at most block_size tokens")
    p.add_argument(
        "--position", type=int, help="position whose values and next-token candidates are shown (default: the last)"
    )
    p.add_argument("--top", type=int, default=10, metavar="K", help="next-token candidates to list (default 10)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object: tokens, stages (values at the position), top"
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_trace)


def _run_trace(args: argparse.Namespace) -> None:
    from gptlab.commands.trace import print_trace

    print_trace(args.run, args.prompt.replace("\\n", "\n"), args.position, args.top, args.device, args.json)


def _add_step(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "step",
        help="take training steps on one window of text and show what they change",
        description="Train a copy of the run's model on one window of text with the run's own optimizer "
        "and learning-rate rule, exactly as `gptlab train` steps, and show for every position the target "
        "token's probability before and after, the loss, the gradient's norm by layer and the update's "
        "size by parameter role. Repeat steps to watch the model memorise the window. The run on disk is "
        "never changed. A text longer than the context keeps its last block_size+1 tokens.",
    )
    p.add_argument("run", metavar="RUN", help="run directory (only read)")
    p.add_argument(
        "--text",
        help="the window to train on (\\n is a newline); default: a random window of the run's validation data",
    )
    p.add_argument("--steps", type=int, default=1, metavar="N", help="steps to take on the window (1..100, default 1)")
    p.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        help="learning rate of the hidden matrices (other roles keep their ratio); default: the run's schedule "
        "at its step, or its peak lr once the schedule has ended",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: loss_before, loss_after, losses, positions, grad_norm_by_layer, "
        "grad_norm_by_role, update_norm_by_role, lr",
    )
    p.add_argument("--device", default="auto", help="where the copy trains: auto (default), cpu, cuda or mps")
    p.set_defaults(func=_run_step)


def _run_step(args: argparse.Namespace) -> None:
    from gptlab.commands.step import print_step

    text = None if args.text is None else args.text.replace("\\n", "\n")
    print_step(args.run, text, args.steps, args.lr, args.device, args.json)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a trained run over HTTP: completions API and explorer page",
        description="Serve a run: an interactive page at / (tokens, next-token probabilities, "
        "stepping, attention maps, embeddings) with its JSON under /api, and an "
        "OpenAI-compatible API: POST /v1/completions, GET /v1/models, GET /health. Binds "
        "127.0.0.1 unless told otherwise. Concurrent requests are batched: their decode steps run "
        "together as one forward pass (continuous batching), up to --max-batch sequences; "
        "GET /metrics has Prometheus metrics.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for (default 2048)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="sequences decoded together in one forward pass (default 16; 1: one sequence at a time, "
        "first come first served)",
    )
    p.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="sequences that may wait for a place in the batch; past it requests get 503 (default 256)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=4.0,
        help="largest request body accepted, in MB; larger ones get 413 unread (default 4)",
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> None:
    from gptlab.serve.app import serve

    if not 0 < args.max_body_mb < 2**20:  # also refuses nan
        raise GptlabError(f"--max-body-mb {args.max_body_mb} must be a positive number of megabytes")
    serve(
        args.run,
        args.host,
        args.port,
        args.device,
        args.max_tokens_limit,
        args.max_batch,
        args.max_waiting,
        int(args.max_body_mb * 2**20),
    )


def _add_poem_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "poem-data",
        help="poem records -> instruction and preference JSONL for finetune/align",
        description="Turn poem records ({title, author, paragraphs}: the Tang poems, or your own "
        ".json/.jsonl) into instruction records {prompt, response} (prompt: the template with the "
        "title) and preference records {prompt, chosen, rejected} (chosen: a five-character poem, "
        "rejected: a poem of another form). --verse-pairs writes preference records ranked by the verse "
        "checker (`gptlab verse`): two real poems whose titles are of the same kind (the same first "
        "character), the better-scored chosen, for `gptlab reward` (or align).",
    )
    p.add_argument("poems", nargs="+", metavar="POEMS", help=".jsonl or .json files of poem records")
    p.add_argument("--instructions", metavar="FILE", help="instruction JSONL to write")
    p.add_argument("--preferences", metavar="FILE", help="preference JSONL to write")
    p.add_argument("--verse-pairs", metavar="FILE", help="preference JSONL ranked by the verse checker to write")
    p.add_argument(
        "--template",
        default="請用以下題目寫一首詩：{title}",
        help="the prompt; {title} and {author} are filled in (default: 請用以下題目寫一首詩：{title})",
    )
    p.add_argument("--seed", type=int, default=1337, help="seed for pairing rejected poems")
    p.set_defaults(func=_run_poem_data)


def _run_poem_data(args: argparse.Namespace) -> None:
    from gptlab.posttrain.poems import convert

    written, report = convert(
        args.poems, args.instructions, args.preferences, args.template, args.seed, verse_pairs=args.verse_pairs
    )
    for line in report.lines():
        print(line)
    for path, n in written.items():
        print(f"wrote {path} ({n:,} records)")


def _add_posttrain(sub: argparse._SubParsersAction, name: str, help_: str, description: str) -> None:
    p = sub.add_parser(name, help=help_, description=description)
    p.add_argument("--from", dest="base", metavar="RUN", help="the run to start from (read, never written)")
    p.add_argument("--data", metavar="FILE", help="JSONL records to train on")
    p.add_argument("--out", metavar="RUN2", help="run directory to write")
    p.add_argument("--resume", metavar="RUN2", help="continue RUN2 from its last checkpoint")
    p.add_argument("--max-steps", type=int, help="number of optimizer steps")
    p.add_argument("--epochs", type=float, help="passes over the training records (sets the steps)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="training and posttrain field overrides (lr=1e-4 batch_size=8 held_out=64 beta=0.1 ...)",
    )
    p.set_defaults(func=_run_posttrain, stage={"finetune": "sft", "align": "dpo", "reward": "rm"}[name])


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    _add_posttrain(
        sub,
        "finetune",
        "instruction fine-tuning of a run: learn to answer and to stop",
        "Fine-tune a run on instruction JSONL ({prompt, response} or {messages: [{role, content}]}): "
        "the chat template's tokens are added after the vocabulary, the loss counts only the "
        "answer's tokens, held-out records give the eval loss and sample answers. Its own "
        "schedule (lr 3e-4 cosine, 300 steps, batch 16 unless overridden); checkpoints, "
        "--resume, torchrun DDP, metrics and report as for train.",
    )


def _add_align(sub: argparse._SubParsersAction) -> None:
    _add_posttrain(
        sub,
        "align",
        "preference alignment of a run with DPO",
        "Align a run with DPO on preference JSONL ({prompt, chosen, rejected}) against a frozen "
        "copy of the starting run (beta=0.1 unless overridden); logs the held-out pairs' reward "
        "margin and preference accuracy. Defaults: lr 5e-5 cosine, 200 steps, 8 pairs per batch.",
    )


def _add_reward(sub: argparse._SubParsersAction) -> None:
    _add_posttrain(
        sub,
        "reward",
        "a reward model: a run's transformer with a scalar head, trained on preference pairs",
        "Train a reward model on preference JSONL ({prompt, chosen, rejected}, e.g. from `gptlab "
        "poem-data --verse-pairs`): the run's transformer with a scalar head read at the last token, "
        "the Bradley–Terry loss; logs the held-out pairs' accuracy. Defaults: lr 1e-4 cosine, 200 "
        "steps, 8 pairs per batch. `gptlab serve RM` answers POST /api/reward; `gptlab rl --reward RM` "
        "uses it.",
    )


def _add_verse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verse",
        help="check classical Chinese verse: lines, regular form, rhyme, level/oblique tones, a score",
        description="Check poems with the verse checker: lines (clauses closed by ，。！？； or a text "
        "line), characters per line, regular (4 or 8 lines all of 5 or all of 7 characters), rhyme of the "
        "even lines and the level/oblique (平仄) pattern, both from modern readings (pypinyin; an "
        "approximation of the classical rhymes and tones), and score = (0.4 regular + 0.3 rhyme + 0.3 "
        "tones) x variety. A .jsonl/.json file holds one poem per record ('paragraphs' or 'text'); "
        "other files and TEXT hold poems separated by blank lines.",
    )
    p.add_argument("source", metavar="TEXT|FILE", help="a poem (or poems), a text file or a record file")
    p.add_argument("--json", action="store_true", help="one JSON object per poem")
    p.set_defaults(func=_run_verse)


def _run_verse(args: argparse.Namespace) -> None:
    from gptlab.commands.verse import verse

    verse(args.source, args.json)


def _run_posttrain(args: argparse.Namespace) -> int:
    from gptlab.posttrain.run import posttrain

    overrides = list(args.overrides) + ([f"epochs={args.epochs}"] if args.epochs is not None else [])
    result = posttrain(args.stage, args.base, args.data, args.out, args.resume, overrides, args.max_steps)
    return 130 if result.interrupted else 0


def _add_rl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rl",
        help="reinforcement learning of a chat run with GRPO: answers scored by a reward",
        description="Train a fine-tuned run with GRPO: each prompt is answered group_size times "
        "(8) through the inference engine, each answer scored by the reward (the verse checker, "
        "or a reward-model run from `gptlab reward`; an answer that does not end scores 0), and "
        "answers above their group's mean made more likely, with a clipped ratio (clip=0.2) and a "
        "KL penalty (kl=0.04) to the frozen starting run. Progress lines show mean reward, KL and "
        "answer length; samples.txt keeps answers with their rewards. Defaults: lr 1e-5 cosine, 100 "
        "steps, 4 prompts per step, answers of at most rollout_tokens=64 tokens at "
        "rollout_temperature=1. Checkpoints, --resume, torchrun DDP as for train.",
    )
    p.add_argument("--from", dest="base", metavar="RUN", help="the chat run to start from (read, never written)")
    p.add_argument("--prompts", metavar="FILE", help="JSONL records with a 'prompt' field (instruction data serves)")
    p.add_argument("--reward", metavar="verse|RM_RUN", help="the verse checker, or a reward-model run")
    p.add_argument("--out", metavar="RUN2", help="run directory to write")
    p.add_argument("--resume", metavar="RUN2", help="continue RUN2 from its last checkpoint")
    p.add_argument("--max-steps", type=int, help="number of optimizer steps")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="training and posttrain field overrides (lr=1e-5 batch_size=4 group_size=8 kl=0.04 clip=0.2 ...)",
    )
    p.set_defaults(func=_run_rl)


def _run_rl(args: argparse.Namespace) -> int:
    from gptlab.posttrain.run import posttrain

    result = posttrain(
        "rl", args.base, args.prompts, args.out, args.resume, list(args.overrides), args.max_steps, args.reward
    )
    return 130 if result.interrupted else 0


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="talk with a fine-tuned run in the terminal",
        description="An interactive conversation with a run that has a chat template (from "
        "`gptlab finetune`, `gptlab align` or `gptlab rl`): answers stream, the history is kept within the "
        "context window (oldest turns dropped first); Ctrl-D or Ctrl-C leaves.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=0, help="most tokens per answer (default: the context size)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--system", default="", help="a system message that opens the conversation")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_chat)


def _run_chat(args: argparse.Namespace) -> None:
    from gptlab.posttrain.terminal import chat

    chat(args.run, args.device, args.temperature, args.top_p, args.max_tokens, args.seed, args.system)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="parameters, FLOPs and training memory of a preset, without training",
        description="Print a model's parameters (by place and by role), FLOPs per token and the "
        "memory one training step needs (weights, gradients, optimizer state, activations at "
        "B x T), all read from the model built on the meta device (no memory used), the history its "
        "training would keep, and its shape schedule (seq_len_start, batch_size_start) where it has one. "
        "With --memory, also the largest batch that fits; with --run RUN, a trained run's model, its shape "
        "schedule and the steps its history kept, with their size on disk.",
    )
    p.add_argument("--preset", default="cpu-tiny")
    p.add_argument("--vocab-size", type=int, help="vocabulary size (char presets have none of their own)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="precision of the activations (autocast; weights stay float32)",
    )
    p.add_argument(
        "--memory",
        metavar="SIZE",
        help="device memory, e.g. 24GB or 80GiB: print the largest batch whose training step fits",
    )
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument(
        "--run",
        metavar="RUN",
        help="a trained run instead of a preset: its model, and the steps its history kept with their disk cost",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config field overrides")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    from gptlab.config import build_config
    from gptlab.model.accounting import describe, describe_memory, parse_bytes
    from gptlab.model.presets import CHAR_VOCAB, PRESETS
    from gptlab.train.history import describe_history, describe_kept
    from gptlab.train.ramp import describe_ramp

    if args.run:
        from gptlab.runs import read_config

        if args.overrides or args.memory:
            raise GptlabError(
                "--run describes the run as it trained: KEY=VALUE overrides and --memory go with --preset"
            )
        run_cfg = read_config(args.run)
        ramp = describe_ramp(run_cfg.train, run_cfg.model.block_size)
        for line in describe(run_cfg.model) + ([ramp] if ramp else []) + describe_kept(args.run):
            print(line)
        return
    if args.list:
        for name, values in PRESETS.items():
            m = values["model"]
            variant = " modern" if m.get("position") == "rope" else ""
            print(
                f"{name:16s} n_layer={m['n_layer']} n_head={m['n_head']} "
                f"n_embd={m['n_embd']} block_size={m['block_size']}{variant}"
            )
        return
    try:
        memory = parse_bytes(args.memory) if args.memory else None
    except ValueError as exc:
        raise GptlabError(f"--memory: {exc}") from None
    overrides = list(args.overrides) + ([f"vocab_size={args.vocab_size}"] if args.vocab_size else [])
    cfg = build_config(args.preset, None, overrides)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = CHAR_VOCAB
        print(
            f"note: this preset takes its vocabulary from the dataset; assuming {CHAR_VOCAB} (tinyshakespeare's "
            "characters). Pass --vocab-size V to change it."
        )
    ramp = describe_ramp(cfg.train, cfg.model.block_size)
    for line in describe(cfg.model) + describe_memory(cfg, args.precision, memory) + [describe_history(cfg)]:
        print(line)
    if ramp:
        print(ramp)


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="loss curves of one or more runs as an image",
        description="Plot train and val loss against steps and tokens seen, with the learning "
        "rate on a second axis. One run: RUN/loss.png. Several runs: overlaid into --out.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", help="image to write (.png, .svg or .pdf; default RUN/loss.png for one run)")
    p.set_defaults(func=_run_plot)


def _run_plot(args: argparse.Namespace) -> None:
    from gptlab.report.plot import write_loss_plot

    print(f"wrote {write_loss_plot(args.runs, args.out)}")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page about a run",
        description="Write RUN/report.html: final losses (nats, bits per byte), throughput, "
        "MFU, loss curves, samples in training order, config, parameters, data summary. "
        "Images are inlined: the file opens anywhere, offline.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from gptlab.report.html import write_report

    path, notes = write_report(args.run)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {path}")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure training speed: tokens/s, step time, MFU, peak memory",
        description="Benchmarks. `bench train`: a short warm-up, then timed training steps of a "
        "preset on random tokens (no dataset needed).",
    )
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    t = what.add_parser(
        "train",
        help="time training steps of a preset",
        description="Warm-up steps, then timed optimizer steps exactly as `gptlab train` runs them; "
        "prints tokens/s, step time, model FLOP/s, MFU and peak memory.",
    )
    t.add_argument("--preset", required=True, help="named model size (see `gptlab info --list`)")
    t.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    t.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    t.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    t.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the model (auto: on for CUDA, off on CPU)",
    )
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config field overrides (batch_size=4 ...)")
    t.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> None:
    from gptlab.train.bench import bench_train, report_lines

    result = bench_train(args.preset, args.device, args.steps, args.warmup, args.compile, args.overrides)
    for line in report_lines(result):
        print(line)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    from gptlab.scaling.experiment import add_arguments

    p = sub.add_parser(
        "sweep",
        help="measure the scaling law: a model family at FLOP budgets, fit, held-out check",
        description="Train a family of model sizes at fixed training-FLOP budgets, fit "
        "L(N, D) = E + A/N^alpha + B/D^beta to the val losses, report the compute-optimal size per "
        "budget, then predict a held-out run and train it to check (benchmarks/scaling_law.py).",
    )
    add_arguments(p)
    p.set_defaults(func=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> None:
    from gptlab.scaling.experiment import run_sweep

    run_sweep(args)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a run as a Hugging Face transformers checkpoint",
        description="Export a run's current checkpoint as a directory that transformers' "
        "AutoModelForCausalLM and AutoTokenizer load offline: config.json, model.safetensors, "
        "generation_config.json, tokenizer.json, tokenizer_config.json and a README.md model "
        "card. The classic model becomes GPT-2; RoPE/RMSNorm models become Llama (Qwen3 with "
        "qk_norm=true); a combination none of them expresses is refused with the reason.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--format", default="hf", choices=("hf",), help="hf: Hugging Face transformers (default)")
    p.add_argument("--out", required=True, help="directory to write (must not exist yet)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from gptlab.interop.export import export_run

    print(f"wrote {export_run(args.run, args.out, args.format)}")


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="make a run of a local transformers checkpoint (GPT-2, Llama, Qwen3)",
        description="Import a local transformers checkpoint directory (config.json, "
        "model.safetensors, tokenizer.json) as a gptlab run that sample, eval, serve and "
        "export take. With --data DATASET (prepared with `gptlab prepare CORPUS --tokenizer "
        "DIR`), `gptlab train --resume RUN` continues pretraining it.",
    )
    p.add_argument("checkpoint", metavar="DIR", help="transformers checkpoint directory")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--data", help="prepared dataset to continue pretraining on (optional)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="train settings for continued pretraining (lr=1e-4 max_steps=200 ...)",
    )
    p.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> None:
    from gptlab.interop.import_hf import import_checkpoint

    print(f"wrote {import_checkpoint(args.checkpoint, args.out, args.data, args.overrides)}")


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare,
    _add_couplets,
    _add_tokenize,
    _add_train,
    _add_sample,
    _add_info,
    _add_eval,
    _add_trace,
    _add_step,
    _add_serve,
    _add_plot,
    _add_report,
    _add_bench,
    _add_sweep,
    _add_export,
    _add_import,
]


# After pretraining (docs/concepts/training.md): data, fine-tuning, alignment, reward model, reinforcement
# learning, chat.
COMMANDS += [_add_poem_data, _add_finetune, _add_align, _add_verse, _add_reward, _add_rl, _add_chat]


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors print whatever was typed (an undecodable byte in an
    argument arrives as a lone surrogate, which a strict stream cannot write: it is shown escaped)."""

    def _print_message(self, message: str, file=None) -> None:
        super()._print_message(message and message.encode("utf-8", "backslashreplace").decode("utf-8"), file)


class IntermixedParser(Parser):
    """A subcommand's parser: options and positional words in any order, as users write them
    (`train --data D --out R n_layer=2 --max-steps 2 eval_interval=1`), through argparse's
    intermixed parsing. A parser with subcommands of its own (bench) parses as argparse does."""

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):
        """Options first, then the positional words wherever they stood."""
        nested = any(a.nargs == argparse.PARSER for a in self._get_positional_actions())
        if self._parsing or nested:  # parse_known_intermixed_args calls back in here for each pass
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


# Where running out of memory is the model's size: the error says what to shrink.
TRAINING_COMMANDS = ("train", "finetune", "align", "reward", "rl", "bench", "sweep")


def build_parser() -> argparse.ArgumentParser:
    """The gptlab argument parser with every subcommand."""
    parser = Parser(
        prog="gptlab",
        description="Pretrain GPT-style language models from raw text, and put them to use.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gptlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=IntermixedParser)
    for add in COMMANDS:
        add(sub)
    return parser


def one_line(message: str) -> str:
    """An error message as the one line it promises to be: a newline or other control character the
    user typed (in a path, a prompt, an override) is shown escaped, as is a lone surrogate."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
        print(f"gptlab: error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(0)  # output piped into e.g. `head`, which stopped reading
    except (OSError, MemoryError) as exc:
        # The machine refused (read-only directory, full disk, out of memory): one line, as promised.
        training = args.command in TRAINING_COMMANDS
        print(f"gptlab: error: {one_line(describe_os_error(exc, training))}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("gptlab: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
