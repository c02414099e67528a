"""Attention maps recomputed from hooks are the model's own, causal; the embedding map's PCA and
neighbours match hand-made cases."""

import math

import torch

from gptlab.config import ModelConfig
from gptlab.model.embedding_map import nearest_neighbours, pca_2d
from gptlab.model.gpt import GPT
from gptlab.model.introspect import attention_maps


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()


def test_attention_maps_are_the_weights_the_model_uses():
    model = _model()
    ids = [3, 1, 4, 1, 5, 9, 2]
    maps = attention_maps(model, ids)
    assert maps.shape == (2, 2, 7, 7)
    T, C, H = len(ids), 16, 2
    with torch.no_grad():
        x = model.wte(torch.tensor([ids])) + model.wpe(torch.arange(T))
        for layer, block in enumerate(model.blocks):
            h = block.ln_1(x)
            q, k, v = block.attn.qkv(h).split(C, dim=2)
            q, k, v = (t.view(1, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            weights = torch.zeros(H, T, T)
            for head in range(H):  # explicit loops: row t normalises over positions 0..t only
                for t in range(T):
                    scores = torch.stack([q[0, head, t] @ k[0, head, s] for s in range(t + 1)]) / math.sqrt(C // H)
                    weights[head, t, : t + 1] = torch.softmax(scores, dim=0)
            assert torch.allclose(maps[layer], weights, atol=1e-5)
            # These weights, applied to v, give exactly what the block's attention outputs.
            y = (weights.unsqueeze(0) @ v).transpose(1, 2).reshape(1, T, C)
            assert torch.allclose(block.attn.proj(y), block.attn(h), atol=1e-5)
            x = block(x)
    assert all(not block.attn.qkv._forward_hooks for block in model.blocks)  # hooks removed


def test_attention_is_causal_and_uses_the_context_window():
    model = _model()
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # longer than block_size=8
    maps = attention_maps(model, ids)
    assert maps.shape[-1] == 8
    assert torch.allclose(maps, attention_maps(model, ids[-8:]))
    assert torch.all(torch.triu(maps, diagonal=1) == 0)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 2, 8), atol=1e-5)
    changed = attention_maps(model, ids[-8:-1] + [0])  # a different last token
    assert torch.allclose(changed[..., :7, :7], maps[..., :7, :7])  # earlier rows cannot see it


def test_pca_finds_the_main_directions_and_explains_variance():
    torch.manual_seed(1)
    n = 400
    a, b = torch.randn(n) * 3, torch.randn(n) * 2
    a, b = a - a.mean(), b - b.mean()
    b = b - (b @ a) / (a @ a) * a  # uncorrelated with a, so the principal axes are exactly these two
    # Variance mostly along (1,1,0,0)/sqrt2 (std 3), then (0,0,1,0) (std 2), a little noise elsewhere.
    weight = torch.stack([a / math.sqrt(2), a / math.sqrt(2), b, torch.zeros(n)], dim=1) + 5.0
    weight[:, 3] += torch.randn(n) * 0.01
    points, explained = pca_2d(weight)
    assert points.shape == (n, 2)
    assert torch.allclose(points[:, 0].abs(), a.abs(), atol=0.05)
    assert torch.allclose(points[:, 1].abs(), b.abs(), atol=0.05)
    total = (a.var() + b.var()).item()
    assert abs(explained[0] - a.var().item() / total) < 0.01 and abs(explained[1] - b.var().item() / total) < 0.01


def test_nearest_neighbours_rank_by_cosine_and_exclude_the_token():
    weight = torch.tensor([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [-1.0, 0.1], [1.0, 1.0]])
    near = nearest_neighbours(weight, 0, 3)
    assert [i for i, _ in near] == [1, 4, 2]  # length does not matter, direction does
    assert near[0][1] == torch.nn.functional.cosine_similarity(weight[0], weight[1], dim=0).item()
    assert len(nearest_neighbours(weight, 0, 99)) == 4
