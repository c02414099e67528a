"""`gptlab sample`: load a run, generate, print (streamed text, or each step's top candidates with
their probabilities; an encoder–decoder run's targets for a source)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.inference.decoding import Event, SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.inference.generate import prompt_ids
from gptlab.inference.probs import top_candidates
from gptlab.inference.seq2seq import translate
from gptlab.model.encdec import EncoderDecoder
from gptlab.runs import load_run
from gptlab.tokenizers import Tokenizer

MAX_NUM_SAMPLES = 1024  # one batch: its KV cache must fit in memory


def print_samples(
    run: str,
    prompt: str,
    params: SamplingParams,
    num_samples: int = 1,
    device: str = "auto",
    show_probs: int = 0,
    as_json: bool = False,
    use_cache: bool = True,
    step: int | None = None,
) -> None:
    """`gptlab sample`: num_samples continuations of prompt, generated in one batch.

    Plain: the first sample streams to stdout as it is generated, the others follow as they finish.
    show_probs K: after each token, the top K candidates with their probabilities; as_json: one
    JSON object per step, then one per sample with its text. step: the weights the run kept at that step
    of its history instead of its own.
    """
    params.validate()
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise GptlabError(
            f"num_samples={num_samples} must be in [1, {MAX_NUM_SAMPLES}] (they are generated in one batch)"
        )
    if show_probs < 0:
        raise GptlabError(f"show_probs={show_probs} must be >= 0")
    if as_json and not show_probs:
        raise GptlabError("--json goes with --show-probs K (it prints one object per step)")
    loaded = load_run(run, pick_device(device), step)
    if isinstance(loaded.model, EncoderDecoder):
        raise GptlabError(f"{run} is an encoder–decoder run (arch=encdec): give it a source with --source TEXT")
    ids = prompt_ids(loaded.tokenizer, prompt)  # refuses unknown characters before printing anything
    steps = generate_steps(
        loaded.model, loaded.tokenizer, [ids] * num_samples, params, use_cache, with_probs=show_probs > 0
    )
    if show_probs:
        _print_probs(steps, loaded.tokenizer, prompt, num_samples, show_probs, as_json)
    else:
        _print_text(steps, prompt, num_samples)


def _header(i: int, num_samples: int) -> str:
    return f"--- sample {i + 1}/{num_samples} ---\n" if num_samples > 1 else ""


def _print_text(steps: Iterator[list[Event]], prompt: str, num_samples: int) -> None:
    texts = [""] * num_samples
    out = sys.stdout
    out.write(_header(0, num_samples) + prompt)
    out.flush()
    for step in steps:
        for s in step:
            texts[s.seq] += s.text
            if s.seq == 0 and s.text:
                out.write(s.text)
                out.flush()
    out.write("\n")
    for i in range(1, num_samples):
        out.write(_header(i, num_samples) + prompt + texts[i] + "\n")
    out.flush()


def _print_probs(
    steps: Iterator[list[Event]], tokenizer: Tokenizer, prompt: str, num_samples: int, k: int, as_json: bool
) -> None:
    texts, finish, counts = [""] * num_samples, ["length"] * num_samples, [0] * num_samples
    for step in steps:
        for s in step:
            assert s.token is not None and s.probs is not None  # generate_steps gives both here
            counts[s.seq] += 1
            texts[s.seq] += s.text
            finish[s.seq] = s.finish or finish[s.seq]
            piece, prob = tokenizer.id_to_piece(s.token), float(s.probs[s.token])
            chosen = {"id": s.token, "piece": piece, "prob": prob}
            cands = top_candidates(tokenizer, s.probs, k)
            if as_json:
                print(
                    json.dumps(
                        {
                            "sample": s.seq,
                            "step": counts[s.seq],
                            "token": chosen,
                            "candidates": [vars(c) for c in cands],
                        },
                        ensure_ascii=False,
                    ),
                    flush=True,
                )
            else:
                where = f"[{s.seq + 1}] " if num_samples > 1 else ""
                shown = " | ".join(f"{_quote(c.piece)} {c.prob:.2%}" for c in cands)
                print(
                    f"{where}step {counts[s.seq]}: {_quote(piece)} ({prob:.2%})  candidates: {shown}",
                    flush=True,
                )
    for i in range(num_samples):
        if as_json:
            print(
                json.dumps(
                    {"sample": i, "prompt": prompt, "text": texts[i], "finish_reason": finish[i]}, ensure_ascii=False
                ),
                flush=True,
            )
        else:
            print(_header(i, num_samples) + prompt + texts[i], flush=True)


def _quote(piece: str) -> str:
    """A token's text with newlines and other invisible characters spelled out."""
    return json.dumps(piece, ensure_ascii=False)


def print_translations(
    run: str,
    source: str,
    params: SamplingParams,
    num_samples: int = 1,
    device: str = "auto",
    use_cache: bool = True,
    step: int | None = None,
) -> None:
    """`gptlab sample RUN --source TEXT`: the target(s) an encoder–decoder run writes for TEXT (with step:
    its weights kept at that step)."""
    params.validate()
    if not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise GptlabError(
            f"num_samples={num_samples} must be in [1, {MAX_NUM_SAMPLES}] (they are generated in one batch)"
        )
    loaded = load_run(run, pick_device(device), step)
    if not isinstance(loaded.model, EncoderDecoder):
        raise GptlabError(
            f"{run} is a decoder-only GPT (arch={loaded.config.model.arch}): it continues a --prompt; "
            "--source is for encoder–decoder runs (arch=encdec)"
        )
    for i, text in enumerate(translate(loaded.model, loaded.tokenizer, source, params, num_samples, use_cache)):
        header = f"--- sample {i + 1}/{num_samples} ---\n" if num_samples > 1 else ""
        sys.stdout.write(f"{header}{source} -> {text}\n")
    sys.stdout.flush()
