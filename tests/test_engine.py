"""The inference engine: the KV cache changes speed, never the tokens; batching, seeds, stop strings."""

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.inference.probs import next_token_probs
from gptlab.inference.sampling import apply_repetition_penalty, sample_rows
from gptlab.inference.text import TextStream
from gptlab.model.gpt import GPT
from gptlab.tokenizers import CharTokenizer

BLOCK = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine their hand-offs cost more
    than the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=40, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)).eval()


def greedy_by_full_recomputation(model, ids, n):
    """The definition the cache must match: feed the last block_size tokens, take the argmax."""
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids[-BLOCK:]]))
            ids.append(int(logits[0, -1].argmax()))
            out.append(ids[-1])
    return out


def run(model, prompts, params, use_cache=True, tokenizer=None):
    tokens, texts, finish = [[] for _ in prompts], [""] * len(prompts), [None] * len(prompts)
    for steps in generate_steps(model, tokenizer, prompts, params, use_cache):
        for s in steps:
            tokens[s.seq].append(s.token)
            texts[s.seq] += s.text
            finish[s.seq] = s.finish
    return tokens, texts, finish


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_matches_full_recomputation_past_block_size(model, use_cache):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [7]]  # different lengths: padded batch
    tokens, _, finish = run(model, prompts, SamplingParams(3 * BLOCK, temperature=0), use_cache)
    for prompt, got in zip(prompts, tokens):
        assert got == greedy_by_full_recomputation(model, prompt, 3 * BLOCK)
    assert finish == ["length"] * 3


@torch.no_grad()
def test_cached_distributions_equal_recomputed_ones_every_step(model):
    rows = [[3, 1, 4, 1, 5], [9]]
    params = SamplingParams(2 * BLOCK, temperature=0)
    for steps in generate_steps(model, None, [list(r) for r in rows], params, with_probs=True):
        for s in steps:
            full = torch.softmax(model(torch.tensor([rows[s.seq][-BLOCK:]]))[0][0, -1], -1)
            torch.testing.assert_close(s.probs, full, atol=1e-5, rtol=1e-4)
            rows[s.seq].append(s.token)


def run_with_probs(model, prompts, params, **options):
    tokens, probs = [[] for _ in prompts], [[] for _ in prompts]
    for steps in generate_steps(model, None, prompts, params, with_probs=True, **options):
        for s in steps:
            tokens[s.seq].append(s.token)
            probs[s.seq].append(s.probs)
    return tokens, probs


def test_finished_rows_leave_the_batch_without_disturbing_the_others(model):
    prompts, params = [[1, 2], [3, 4, 5], [6]], SamplingParams(12, temperature=0)
    free, free_probs = run_with_probs(model, prompts, params)
    end = free[0][1]  # the first sequence ends at its second token
    ended, ended_probs = run_with_probs(model, prompts, params, end=end)
    assert ended[0] == free[0][: free[0].index(end) + 1]
    assert max(len(t) for t in ended) > len(ended[0])  # others went on without it
    for i in range(len(prompts)):  # the same tokens and distributions, to the last bit, until each ends
        n = len(ended[i])
        assert ended[i] == free[i][:n] and all(torch.equal(a, b) for a, b in zip(ended_probs[i], free_probs[i]))


def test_seeded_sampling_is_reproducible_with_and_without_cache_and_batched(model):
    params = SamplingParams(2 * BLOCK, temperature=1.3, top_k=20, top_p=0.95, seed=11)
    cached, _, _ = run(model, [[1, 2, 3]] * 3, params)
    again, _, _ = run(model, [[1, 2, 3]] * 3, params)
    uncached, _, _ = run(model, [[1, 2, 3]] * 3, params, use_cache=False)
    assert cached == again == uncached
    assert len({tuple(t) for t in cached}) == 3  # each sample draws with its own seed
    # Sample i of a batch is the sequence seed + i gives alone.
    alone, _, _ = run(model, [[1, 2, 3]], SamplingParams(2 * BLOCK, 1.3, 20, 0.95, seed=12))
    assert alone[0] == cached[1]
    other, _, _ = run(model, [[1, 2, 3]], SamplingParams(2 * BLOCK, 1.3, 20, 0.95, seed=99))
    assert other[0] != cached[0]


def test_generated_tokens_stay_inside_top_k_and_top_p_sets(model):
    ids = [5, 6]
    gens = [torch.Generator().manual_seed(3)]
    with torch.no_grad():
        for _ in range(40):
            logits = model(torch.tensor([ids[-BLOCK:]]))[0][:, -1]
            probs = torch.softmax(logits[0] / 2.0, -1)
            top5 = set(torch.topk(logits[0], 5).indices.tolist())
            order = torch.argsort(probs, descending=True)
            before = probs[order].cumsum(0) - probs[order]
            nucleus = set(order[before < 0.5].tolist())
            assert int(sample_rows(logits, gens, 2.0, top_k=5)[0]) in top5
            assert int(sample_rows(logits, gens, 2.0, top_p=0.5)[0]) in nucleus
            ids.append(int(sample_rows(logits, gens, 2.0)[0]))


def test_repetition_penalty_lowers_only_tokens_already_seen():
    logits = torch.tensor([[2.0, -1.0, 2.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 2.0, -1.0]]


def test_repetition_penalty_changes_greedy_output(model):
    plain, _, _ = run(model, [[1, 2, 3]], SamplingParams(20, temperature=0))
    penalised, _, _ = run(model, [[1, 2, 3]], SamplingParams(20, temperature=0, repetition_penalty=50.0))
    assert penalised != plain
    assert len(set(penalised[0])) > len(set(plain[0]))


def test_stop_strings_cut_the_text_and_are_never_half_shown():
    stream = TextStream(CharTokenizer("abcdefgh"), stop=["cde"])
    tok = CharTokenizer("abcdefgh")
    shown = [stream.push(i) for i in tok.encode("abcdX"[:4])]
    assert shown == [("a", False), ("b", False), ("", False), ("", False)]  # "cd" may begin "cde"
    assert stream.push(tok.encode("e")[0]) == ("", True)
    other = TextStream(tok, stop=["cde"])
    assert [other.push(i)[0] for i in tok.encode("acdf")] == ["a", "", "", "cdf"]
    assert TextStream(tok, stop=["h"]).finish() == ("", False)


def test_generation_ends_at_a_stop_string(model):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789.,!?")  # 40 ids, as the model's vocabulary
    _, texts, _ = run(model, [[1, 2]], SamplingParams(30, temperature=0), tokenizer=tok)
    stop = texts[0][5:7]
    _, cut, finish = run(model, [[1, 2]], SamplingParams(30, temperature=0, stop=[stop]), tokenizer=tok)
    assert cut[0] == texts[0][: texts[0].index(stop)] and finish == ["stop"]


def test_show_probs_first_step_is_the_shared_distribution(model):
    steps = next(generate_steps(model, None, [[4, 2]], SamplingParams(1, temperature=0.7), with_probs=True))
    assert torch.equal(steps[0].probs, next_token_probs(model, [4, 2], temperature=0.7))


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("max_new_tokens", -1, "max_new_tokens=-1"),
        ("temperature", -0.5, "temperature"),
        ("top_k", -2, "top_k"),
        ("top_p", 0.0, "top_p"),
        ("repetition_penalty", 0.0, "repetition_penalty"),
        ("stop", [""], "stop strings"),
    ],
)
def test_bad_sampling_settings_are_refused(field, value, needle):
    with pytest.raises(GptlabError, match=needle):
        SamplingParams(**{field: value}).validate()
