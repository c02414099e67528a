"""The KV cache: per-row lengths, and a window that slides past block_size where the model allows it."""

import pytest
import torch
import torch.nn.functional as F

from gptlab.config import ModelConfig
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.inference.kv_cache import KVCache, SlotCache
from gptlab.model import build_model

BLOCK = 8


def model_of(position: str):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=23,
        block_size=BLOCK,
        n_layer=2,
        n_head=2,
        n_embd=16,
        position=position,
        norm="rmsnorm" if position == "rope" else "layernorm",
        qk_norm=position == "rope",
    )
    return build_model(cfg).eval()


def count_wide_forwards(model):
    """Calls of the model with more than one new token per row (prefills/recomputations)."""
    calls = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].size(1)) if args[0].size(1) > 1 else None)
    return calls


def sliding_window_reference(model, ids: list[int], window: int) -> torch.Tensor:
    """Last-position logits of a cache-free pass where every token at every layer attends to itself
    and the window-1 tokens before it, at absolute positions: what a sliding RoPE cache computes."""
    T = len(ids)
    x, rope = model.embed(torch.tensor([ids]), torch.arange(T))
    q_pos, k_pos = torch.arange(T)[:, None], torch.arange(T)[None, :]
    band = (k_pos <= q_pos) & (k_pos > q_pos - window)
    for block in model.blocks:
        attn = block.attn
        q, k, v = attn._qkv(block.ln_1(x), rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
        x = x + attn.proj(y.transpose(1, 2).reshape(1, T, -1))
        x = x + block.mlp(block.ln_2(x))
    return model.head(x[:, -1])


def greedy_steps(model, prompts, n):
    """Each step's (sequence, token, distribution) of greedy decoding through the engine."""
    steps = generate_steps(model, None, prompts, SamplingParams(n, temperature=0), with_probs=True)
    return [[(s.seq, s.token, s.probs) for s in step] for step in steps]


@torch.no_grad()
def test_rope_cache_slides_past_block_size_one_token_per_step():
    model = model_of("rope")
    assert model.cache_layout().can_slide
    wide = count_wide_forwards(model)
    ids = [1, 2, 3]
    for step, [(_, token, probs)] in enumerate(greedy_steps(model, [list(ids)], 3 * BLOCK)):
        expected = torch.softmax(sliding_window_reference(model, ids, BLOCK)[0], -1)
        assert torch.allclose(probs, expected, atol=1e-5), step
        ids.append(token)
    assert wide == [3]  # the prompt's prefill, then one token per step, far past block_size


@torch.no_grad()
def test_learned_positions_recompute_the_window_once_full():
    model = model_of("learned")
    assert not model.cache_layout().can_slide
    wide = count_wide_forwards(model)
    greedy_steps(model, [[1, 2, 3]], BLOCK + 4)
    assert wide[0] == 3 and len(wide) > 1 and all(w == BLOCK for w in wide[1:])


@torch.no_grad()
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_rows_of_different_lengths_decode_as_if_alone(position):
    model = model_of(position)
    prompts = [[5], [1, 2, 3, 4, 5, 6], [7, 8, 9]]
    together = greedy_steps(model, prompts, 2 * BLOCK)
    for i, prompt in enumerate(prompts):
        alone = [step[0][1:] for step in greedy_steps(model, [prompt], 2 * BLOCK)]
        mine = [s[1:] for step in together for s in step if s[0] == i]
        assert [t for t, _ in mine] == [t for t, _ in alone]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(mine, alone))  # to the last bit


def test_cache_tracks_each_rows_length_and_refuses_overflow():
    model = model_of("learned")
    cache = KVCache(model.cache_layout(), 2)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3], [4, 0, 0]]), cache=cache, lengths=torch.tensor([3, 1]))
    assert cache.seen.tolist() == [3, 1]
    assert cache.positions(1).tolist() == [[3], [1]]
    with pytest.raises(ValueError, match="exceeds block_size"):
        model.cache_layout(capacity=BLOCK + 1)


FEEDS = [3, 2, 1, 1, 1]  # a prefill, a later chunk, then one token at a time: 8 tokens, the whole block


def _feed_contiguous(model, rows):
    """Logits of each row's last token after each feed, through one KVCache (rows fed together)."""
    cache, out, done = KVCache(model.cache_layout(), len(rows)), [], 0
    for n in FEEDS:
        x = torch.tensor([row[done : done + n] for row in rows])
        out.append(model(x, cache=cache)[0][:, -1])
        done += n
    return out


def _feed_slotted(model, rows):
    """The same through a SlotCache, each row in another slot than its index, rows reordered per feed."""
    cache, out, done = SlotCache(model.cache_layout(), len(rows) + 1), [], 0
    slots = list(range(len(rows), 0, -1))  # row i in slot len-i: never its own index
    for step, n in enumerate(FEEDS):
        order = list(range(len(rows)))[:: 1 if step % 2 else -1]
        cache.select([slots[i] for i in order])
        logits = model(torch.tensor([rows[i][done : done + n] for i in order]), cache=cache)[0][:, -1]
        out.append(logits[torch.tensor(order).argsort()])
        done += n
    return out


@torch.no_grad()
@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("feed", [_feed_contiguous, _feed_slotted], ids=["contiguous", "slotted"])
def test_both_caches_attend_as_the_cache_free_forward(position, feed):
    model = model_of(position)
    rows = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]]
    full = model(torch.tensor(rows))[0]  # (B, T, V): every position's logits without a cache
    ends = torch.tensor(FEEDS).cumsum(0) - 1
    for got, end in zip(feed(model, rows), ends.tolist()):
        torch.testing.assert_close(got, full[:, end], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_storage_grows_with_the_context_not_to_it():
    model = model_of("rope")
    layout = model.cache_layout(capacity=1000)
    for cache in (KVCache(layout, 2), SlotCache(layout, 2)):
        if isinstance(cache, SlotCache):
            cache.select([0, 1])
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]), cache=cache)
        assert cache.k[0].size(2) < 1000  # short contexts do not pay for the whole capacity
