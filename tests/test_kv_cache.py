"""The KV cache: per-row lengths, and a window that slides past block_size where the model allows it."""

import pytest
import torch
import torch.nn.functional as F

from gptlab.config import ModelConfig
from gptlab.inference.engine import Decoder
from gptlab.inference.kv_cache import KVCache
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


@torch.no_grad()
def test_rope_cache_slides_past_block_size_one_token_per_step():
    model = model_of("rope")
    assert model.cache_can_slide
    wide = count_wide_forwards(model)
    decoder = Decoder(model, [[1, 2, 3]])
    ids = [1, 2, 3]
    for step in range(3 * BLOCK):
        logits = decoder.logits()
        assert torch.allclose(logits[0], sliding_window_reference(model, ids, BLOCK)[0], atol=1e-4), step
        token = int(logits.argmax())
        decoder.append([token])
        ids.append(token)
    assert wide == [3]  # the prompt's prefill, then one token per step, far past block_size


@torch.no_grad()
def test_learned_positions_recompute_the_window_once_full():
    model = model_of("learned")
    assert not model.cache_can_slide
    wide = count_wide_forwards(model)
    decoder = Decoder(model, [[1, 2, 3]])
    for _ in range(BLOCK + 3):
        decoder.append([int(decoder.logits().argmax())])
    decoder.logits()
    assert wide[0] == 3 and len(wide) > 1 and all(w == BLOCK for w in wide[1:])


@torch.no_grad()
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_rows_of_different_lengths_decode_as_if_alone(position):
    model = model_of(position)
    prompts = [[5], [1, 2, 3, 4, 5, 6], [7, 8, 9]]
    together = Decoder(model, prompts)
    alone = [Decoder(model, [p]) for p in prompts]
    for _ in range(4):
        batch = together.logits()
        for row, decoder in enumerate(alone):
            assert torch.allclose(batch[row], decoder.logits()[0], atol=1e-5)
        tokens = batch.argmax(-1).tolist()
        together.append(tokens)
        for decoder, token in zip(alone, tokens):
            decoder.append([token])


def test_cache_tracks_each_rows_length_and_refuses_overflow():
    model = model_of("learned")
    cache = KVCache.for_model(model, 2)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3], [4, 0, 0]]), cache=cache, lengths=torch.tensor([3, 1]))
    assert cache.seen.tolist() == [3, 1]
    assert cache.positions(1).tolist() == [[3], [1]]
    with pytest.raises(ValueError, match="exceeds block_size"):
        KVCache.for_model(model, 1, capacity=BLOCK + 1)
