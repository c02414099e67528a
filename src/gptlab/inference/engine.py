"""The inference engine for callers that want tokens now, in their own thread: `gptlab sample`,
chat in the terminal, post-training samples, RL rollouts. It runs the model service's scheduler
(inference/scheduler.py) synchronously, so the same seed gives the same tokens here and from
`gptlab serve`; each token is chosen by the decoding core (inference/decoding.py).

    prompts -> Scheduler (model + slot cache) -> next-token logits -> decoding.step -> Events -> text
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from gptlab.inference.decoding import Event, SamplingParams
from gptlab.inference.scheduler import Scheduler
from gptlab.inference.scheduler import Sequence as Scheduled
from gptlab.model import Model
from gptlab.tokenizers import Tokenizer

# SamplingParams and Event are the decoding core's; named here too for callers of generate_steps.
__all__ = ["Event", "SamplingParams", "eval_mode", "generate_steps"]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration; the previous mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate_steps(
    model: Model,
    tokenizer: Tokenizer | None,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    use_cache: bool = True,
    with_probs: bool = False,
    end: int | None = None,
) -> Iterator[list[Event]]:
    """Generate continuations of several prompts (token ids) together with a decoder-only model (an
    encoder–decoder writes through inference/seq2seq.py), yielding each step's Events.

    Sequence i draws with params.seed + i. Each step yields one Event per sequence that chose a token
    in it; a sequence's last Event carries its finish reason ("stop": a stop string, or the end token
    if given; "length"). with_probs adds the full next-token distribution (for showing the top
    candidates). Without a tokenizer only ids come out (text stays empty and stop strings cannot apply).
    use_cache=False recomputes every window from scratch: the reference the cache must match.
    """
    params.validate()
    out: list[Event] = []
    seqs = [Scheduled(list(ids), params, i, tokenizer, out.append, with_probs, end) for i, ids in enumerate(prompts)]
    if params.max_new_tokens == 0 or not seqs:
        return
    with eval_mode(model):
        scheduler = Scheduler(model, len(seqs), use_cache=use_cache)
        for seq in seqs:
            scheduler.add(seq)
        while scheduler.has_work():
            scheduler.step()
            # A sequence whose prompt went in this step also decodes in it: a new list for its second token.
            events: list[Event] = []
            in_events: set[int] = set()
            for event in out:
                if event.seq in in_events:
                    yield events
                    events, in_events = [], set()
                events.append(event)
                in_events.add(event.seq)
            if events:
                yield events
            out.clear()
