import math

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.model.accounting import count_params, flops_per_token, matmul_weights
from gptlab.model.gpt import GPT


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def test_loss_at_initialisation_is_near_ln_vocab():
    torch.manual_seed(0)
    cfg = small(vocab_size=65)
    model = GPT(cfg)
    x = torch.randint(0, 65, (16, 32))
    _, loss = model(x, torch.randint(0, 65, (16, 32)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_causal_mask_hides_the_future():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    x = torch.randint(0, 65, (2, 32))
    t = 12
    changed = x.clone()
    changed[:, t + 1 :] = torch.randint(0, 65, (2, 32 - t - 1))
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(changed)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # the change is visible afterwards


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(small(n_layer=2, n_embd=64))
    x = torch.randint(0, 65, (4, 32))
    y = torch.randint(0, 65, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_unembedding_is_tied_to_token_embedding():
    model = GPT(small())
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


@pytest.mark.parametrize(
    "cfg",
    [
        small(),
        small(bias=False, n_layer=3, n_embd=96, n_head=6),
        ModelConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    ],
)
def test_param_count_matches_the_built_model(cfg):
    model = GPT(cfg)
    built = sum(p.numel() for p in model.parameters())  # tied weight counted once
    assert count_params(cfg).total == built


def test_gpt2_small_has_124m_parameters_and_gpt3_embedding_617m():
    gpt2 = ModelConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    assert count_params(gpt2).total == 124_439_808
    gpt3 = ModelConfig(vocab_size=50257, block_size=2048, n_layer=96, n_head=96, n_embd=12288)
    assert count_params(gpt3).by_place["token embedding"] == 617_558_016


def test_flops_per_token_hand_count():
    # Hand count for a 2-layer, d=64, V=65, T=32 model: per layer the Linears hold
    # 64*192 + 64*64 + 64*256 + 256*64 = 49152 weights; unembedding 65*64 = 4160.
    cfg = small()
    n = 2 * 49152 + 4160
    assert matmul_weights(cfg) == n
    f = flops_per_token(cfg)
    attention = 2 * 2 * 2 * 32 * 64  # (q.k and att.v) x 2 FLOPs x layers x T x d
    assert f["forward"] == 2 * n + attention and f["train"] == 3 * f["forward"]


@pytest.mark.parametrize("arch", ["gpt", "encdec"])
def test_head_size_and_norm_epsilons_are_stated_once_and_read_everywhere(arch):
    from gptlab.interop.architectures import hf_config
    from gptlab.model import build_model
    from gptlab.model.layers import LAYERNORM_EPS, RMSNORM_EPS

    # 96 channels over 8 heads: D = 12, which no other size of this model equals.
    modern = small(
        arch=arch, n_head=8, n_embd=96, position="rope", norm="rmsnorm", qk_norm=True, bias=False, mlp="swiglu"
    )
    assert modern.head_dim == 12
    model = build_model(modern)
    assert {a.head_dim for a in model.attention_layers()} == {12}
    assert model.rotary.inv_freq.numel() == 6  # one rotation frequency per pair of a head's channels
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert {m.eps for m in norms} == {RMSNORM_EPS}
    assert (12,) in {m.normalized_shape for m in norms}  # QK-norm normalises a head's channels
    classic = build_model(small(arch=arch))
    assert {m.eps for m in classic.modules() if isinstance(m, torch.nn.LayerNorm)} == {LAYERNORM_EPS}
    if arch == "gpt":  # export states what the model computes, from the same facts
        exported = hf_config(modern, None, None)
        assert exported["head_dim"] == 12 and exported["rms_norm_eps"] == RMSNORM_EPS
        assert hf_config(small(), None, None)["layer_norm_epsilon"] == LAYERNORM_EPS


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="exceeds block_size"):
        GPT(small())(torch.zeros(1, 33, dtype=torch.long))


def test_parameter_names_are_gpt2s_and_the_checkpoints():
    """Checkpoints, the export name maps and the trace read parameters by these names."""
    from gptlab.model import build_model

    block = [
        f"{part}.{kind}"
        for part in ("ln_1", "attn.qkv", "attn.proj", "ln_2", "mlp.fc", "mlp.proj")
        for kind in ("weight", "bias")
    ]
    gpt = build_model(small(n_layer=1))
    assert list(gpt.state_dict()) == [
        "wte.weight",
        "wpe.weight",
        *(f"blocks.0.{n}" for n in block),
        "ln_f.weight",
        "ln_f.bias",
        "lm_head.weight",
    ]
    encdec = build_model(small(arch="encdec", n_layer=1))
    cross = [
        f"{part}.{kind}" for part in ("ln_cross", "cross.q", "cross.kv", "cross.proj") for kind in ("weight", "bias")
    ]
    assert list(encdec.state_dict()) == [
        "wte.weight",
        "wpe_source.weight",
        "wpe.weight",
        *(f"encoder.0.{n}" for n in block),
        "ln_encoder.weight",
        "ln_encoder.bias",
        *(f"decoder.0.{n}" for n in block + cross),
        "ln_f.weight",
        "ln_f.bias",
        "lm_head.weight",
    ]


@pytest.mark.parametrize("variant", [{}, {"position": "rope", "tie_embeddings": False, "logit_softcap": 5.0}])
def test_both_architectures_read_ids_and_write_logits_through_the_same_ends(variant):
    from gptlab.model import build_model

    torch.manual_seed(0)
    gpt, encdec = build_model(small(**variant)), build_model(small(arch="encdec", **variant))
    shared = {k: v for k, v in gpt.state_dict().items() if not k.startswith("blocks.")}
    encdec.load_state_dict(shared, strict=False)  # the same embedding, positions, final norm and head
    assert (encdec.lm_head.weight is encdec.wte.weight) == (gpt.lm_head.weight is gpt.wte.weight)
    ids, positions = torch.randint(0, 65, (2, 9)), torch.arange(3, 12)
    (x_gpt, rope_gpt), (x_encdec, rope_encdec) = gpt.embed(ids, positions), encdec.embed(ids, positions)
    assert torch.equal(x_gpt, x_encdec) and (rope_gpt is None) == (rope_encdec is None)
    logits = encdec.head(x_encdec)
    assert torch.equal(logits, gpt.head(x_gpt))
    if variant.get("logit_softcap"):
        assert logits.abs().max() < variant["logit_softcap"]
