"""The continuous-batching scheduler on tiny random models: a sequence's tokens depend only on
itself and its seed, alone or among others joining and leaving, with chunked prompts and windows
that fill up; cancelled sequences leave the batch."""

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.inference.scheduler import Scheduler, Sequence
from gptlab.model import build_model
from gptlab.tokenizers import CharTokenizer

TEXT = "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak."
BLOCK = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: threads only add contention on the shared test machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer(TEXT)


def _model(tokenizer, **extra):
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=tokenizer.vocab_size, dropout=0.0, **extra
    )
    return build_model(cfg).eval()


def _run(model, tokenizer, requests, max_batch=12, chunk=8, start_at=None):
    """Token ids of each (prompt, params) request, and the distributions they were drawn from
    (one tensor per request); request i joins at scheduler step start_at[i]."""
    sched = Scheduler(model, max_batch, prefill_chunk=chunk)
    out = [[] for _ in requests]
    probs = [[] for _ in requests]
    done = [False] * len(requests)
    start_at = start_at or [0] * len(requests)
    step = 0
    while not all(done):
        for i, (prompt, params) in enumerate(requests):
            if start_at[i] == step:

                def sink(event, i=i):
                    if event.token is not None:
                        out[i].append(event.token)
                        probs[i].append(event.probs)
                    done[i] = done[i] or event.finish is not None

                sched.add(Sequence(tokenizer.encode(prompt), params, 0, tokenizer, sink, with_probs=True))
        sched.step()
        step += 1
        assert step < 10_000
    return [(ids, torch.stack(p) if p else None) for ids, p in zip(out, probs)]


def _same(a, b):
    """Same token ids, and distributions equal to the last bit (a sampled token rarely shows a
    difference in the last bits of the logits; the distributions always do)."""
    return a[0] == b[0] and torch.equal(a[1], b[1])


OTHERS = [  # eight requests with other settings and lengths, some longer than the block
    ("First", SamplingParams(30, temperature=0)),
    ("All: Speak, speak. First Citizen: Before", SamplingParams(12, temperature=1.3, top_k=5, seed=1)),
    ("hear", SamplingParams(40, temperature=0.7, top_p=0.5, seed=2)),
    ("Sp", SamplingParams(9, temperature=1.0, repetition_penalty=1.5, seed=3)),
    ("me", SamplingParams(25, temperature=0.9, stop=("e",), seed=4)),
    ("Before we proceed any further", SamplingParams(33, temperature=1.1, seed=5)),
    ("A", SamplingParams(1, temperature=0.5, seed=6)),
    ("we proceed", SamplingParams(20, temperature=2.0, top_k=3, top_p=0.9, seed=7)),
]


MODERN = {
    "position": "rope",
    "norm": "rmsnorm",
    "qk_norm": True,
    "mlp": "swiglu",
    "tie_embeddings": False,
    "logit_softcap": 15.0,
}


@pytest.mark.parametrize(
    "variant", [{}, {"position": "rope", "norm": "rmsnorm"}, MODERN], ids=["learned", "rope", "modern"]
)
def test_tokens_are_the_same_alone_and_batched_with_others(tokenizer, variant):
    model = _model(tokenizer, **variant)
    # A prompt longer than a prefill chunk, a continuation past the block (the window slides or is
    # recomputed), sampling with every setting at once.
    target = (
        "First Citizen: Before we",
        SamplingParams(40, temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2, seed=11),
    )
    alone = _run(model, tokenizer, [target])[0]
    assert len(alone[0]) == 40
    together = _run(model, tokenizer, [target] + OTHERS, start_at=[3, 0, 0, 1, 2, 5, 9, 20, 4])
    assert _same(together[0], alone)
    # The others are also their own alone, whatever joined before or after them.
    for i in (1, 4, 7):
        assert _same(_run(model, tokenizer, [OTHERS[i]])[0], together[1 + i])
    # With a batch smaller than the crowd, sequences wait for a slot and still get their own tokens.
    assert _same(_run(model, tokenizer, [target] + OTHERS, max_batch=3)[0], alone)


def test_greedy_is_the_engines(tokenizer):
    model = _model(tokenizer)
    ids = tokenizer.encode("First Citizen")
    expected = [s[0].token for s in generate_steps(model, tokenizer, [ids], SamplingParams(30, temperature=0))]
    got = _run(model, tokenizer, [("First Citizen", SamplingParams(30, temperature=0))] + OTHERS[1:4])[0][0]
    assert got == expected  # 13 + 30 tokens: past the 24-token block


def test_a_callers_bf16_autocast_does_not_reach_the_engine(tokenizer):
    # RL draws its rollouts inside a bf16 training step: the engine still decodes in the weights' float32
    # (the decode products and the KV cache are float32), the same tokens and bits as outside it.
    model = _model(tokenizer, position="rope", norm="rmsnorm")
    prompts = [tokenizer.encode("First Citizen"), tokenizer.encode("All: Speak")]
    params = SamplingParams(30, temperature=1.0, seed=3)

    def draw():
        return [
            (e.seq, e.token, e.probs)
            for step in generate_steps(model, tokenizer, prompts, params, with_probs=True)
            for e in step
        ]

    plain = draw()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = draw()
        assert torch.is_autocast_enabled("cpu")  # the caller's autocast is back between and after steps
    assert [(s, t) for s, t, _ in inside] == [(s, t) for s, t, _ in plain]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(inside, plain) if a is not None)


def test_cancelled_sequences_leave_and_free_their_slot(tokenizer):
    model = _model(tokenizer)
    sched = Scheduler(model, 2, prefill_chunk=8)
    events = {0: [], 1: [], 2: []}
    seqs = [
        Sequence(tokenizer.encode("First"), SamplingParams(1000, seed=i), 0, tokenizer, events[i].append)
        for i in range(3)
    ]
    for seq in seqs:
        sched.add(seq)
    for _ in range(5):
        sched.step()
    assert events[0] and events[1] and not events[2]  # two slots: the third waits
    seqs[0].cancel()
    sched.step()
    assert events[0][-1].finish == "cancelled" and seqs[0] not in sched.running
    cancelled_at = len(events[0])
    for _ in range(3):
        sched.step()
    assert len(events[0]) == cancelled_at  # nothing more for the cancelled one
    assert seqs[2] in sched.running and len(events[2]) >= 3  # it took the freed slot


def test_neighbours_of_the_same_length_and_settings_are_computed_together_without_changing_a_bit(tokenizer):
    # Sequences side by side at the same length share one attention call per layer, and sequences
    # with the same settings one sampling filter: each still gets exactly what it gets alone.
    model = _model(tokenizer, position="rope", norm="rmsnorm")
    requests = [("First", SamplingParams(30, temperature=1.0, top_k=10, seed=s)) for s in range(4)]
    together = _run(model, tokenizer, requests)
    assert len({tuple(ids) for ids, _ in together}) == 4
    for i, request in enumerate(requests):
        assert _same(_run(model, tokenizer, [request])[0], together[i])


def test_a_crowd_larger_than_the_probed_rows_changes_nobody(tokenizer):
    # 20 sequences decode together: their products go in chunks (inference/products.py).
    model = _model(tokenizer)
    crowd = [(TEXT[i : i + 3 + i % 5], SamplingParams(30, temperature=1.0, seed=i)) for i in range(20)]
    together = _run(model, tokenizer, crowd, max_batch=24)
    for i in (0, 17):
        assert _same(_run(model, tokenizer, [crowd[i]])[0], together[i])
