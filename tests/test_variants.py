"""The model's variant switches: each does what its name says, and the defaults are the 2019 model."""

import json
import math
from pathlib import Path

import pytest
import torch

from gptlab.config import ModelConfig, build_config
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.model import build_model
from gptlab.model.accounting import count_params, flops_per_token
from gptlab.model.layers import Rotary, make_norm, swiglu_hidden
from gptlab.model.loss import IGNORE, lm_loss

GOLDEN = Path(__file__).parent / "golden" / "classic_trajectory.json"

MODERN = dict(
    position="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False, zero_init=True, bias=False
)


def cfg_of(**overrides) -> ModelConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return ModelConfig(**{**base, **overrides})


VARIANTS = [
    {},
    {"position": "rope"},
    {"norm": "rmsnorm", "qk_norm": True},
    {"mlp": "relu2"},
    {"mlp": "swiglu"},
    {"tie_embeddings": False, "logit_softcap": 15.0},
    MODERN,
    {"value_embeds": True},
    {"resid_mix": True},
    {"smear": True, "position": "rope"},
    {**MODERN, "value_embeds": True, "resid_mix": True, "smear": True, "n_layer": 3},
]


def test_defaults_reproduce_the_classic_trajectory(char_dataset, tmp_path):
    """Training losses, val losses and greedy tokens of the default model, step for step, as recorded
    from the code before the variant switches existed (commit 6547177)."""
    from gptlab.runs import load_run
    from gptlab.train.trainer import train

    golden = json.loads(GOLDEN.read_text())
    for name, extra in {"adamw": [], "sgd": ["optimizer=sgd", "momentum=0.9", "lr=0.1", "min_lr=0.01"]}.items():
        cfg = build_config(
            "cpu-tiny",
            None,
            [
                "n_layer=2",
                "n_head=2",
                "n_embd=32",
                "block_size=32",
                "batch_size=8",
                "dropout=0.1",
                "eval_batches=2",
                "max_steps=12",
                "eval_interval=6",
                "checkpoint_interval=12",
                "log_interval=1",
                "sample_tokens=0",
                "lr=1e-2",
                "min_lr=1e-3",
                "warmup_steps=3",
                "device=cpu",
                "seed=7",
                *extra,
            ],
        )
        cfg.data = str(char_dataset)
        train(cfg, tmp_path / name)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["train_loss"] for r in records if "train_loss" in r] == pytest.approx(
            golden[name]["train_loss"], abs=1e-5
        )
        assert [r["val_loss"] for r in records if "val_loss" in r] == pytest.approx(golden[name]["val_loss"], abs=1e-5)
        run = load_run(tmp_path / name)
        ids = run.tokenizer.encode("ROMEO:")
        tokens = [s[0].token for s in generate_steps(run.model, None, [ids], SamplingParams(40, temperature=0.0))]
        assert tokens == golden[name]["greedy"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={v[k]}" for k in v) or "classic")
def test_every_variant_learns_and_counts_its_parameters(variant):
    torch.manual_seed(0)
    cfg = cfg_of(**variant)
    model = build_model(cfg)
    assert count_params(cfg).total == sum(p.numel() for p in model.parameters())
    x = torch.randint(0, cfg.vocab_size, (4, 16))
    _, loss0 = model(x[:, :-1], x[:, 1:])
    if variant.get("zero_init"):
        assert loss0.item() == pytest.approx(math.log(cfg.vocab_size), abs=1e-5)  # all tokens equally likely
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * loss0.item()


@pytest.mark.parametrize("variant", VARIANTS[1:], ids=lambda v: ",".join(v))
def test_kv_cache_matches_recomputation_for_every_variant(variant):
    torch.manual_seed(1)
    model = build_model(cfg_of(**variant)).eval()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised projections would hide a cache bug
            p.add_(0.05 * torch.randn_like(p))
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    params = SamplingParams(8, temperature=0)  # stays inside the block: both see the same windows

    def steps(use_cache):
        out = generate_steps(model, None, prompts, params, use_cache, with_probs=True)
        return sorted(((s.seq, s.token, s.probs) for step in out for s in step), key=lambda s: s[0])

    cached, full = steps(True), steps(False)
    assert [s[:2] for s in cached] == [s[:2] for s in full]
    assert all(torch.allclose(a[2], b[2], atol=1e-6) for a, b in zip(cached, full))


def test_rope_attention_depends_only_on_relative_position():
    """The same sequence at positions 0.. and at 7..: identical attention weights (RoPE encodes only
    distances); learned positions give different ones."""
    torch.manual_seed(2)
    for position, same in (("rope", True), ("learned", False)):
        model = build_model(cfg_of(position=position, block_size=32)).eval()
        x = torch.randint(0, 37, (1, 10))
        pos = torch.arange(10)
        h0, rope0 = model.embed(x, pos)
        h7, rope7 = model.embed(x, pos + 7)
        attn = model.blocks[0].attn
        w0, w7 = attn.weights(model.blocks[0].ln_1(h0), rope0), attn.weights(model.blocks[0].ln_1(h7), rope7)
        assert torch.allclose(w0, w7, atol=1e-5) == same, position


def test_rotary_rotation_keeps_the_norm_and_rotates_pairs():
    from gptlab.model.ops import rotate

    rotary = Rotary(8, 10000.0, heads=3)
    x = torch.randn(2, 5, 3, 8)  # (B, T, heads, D)
    cos, sin = rotary(torch.arange(5))
    assert cos.shape == sin.shape == (5, 3, 8)
    y = rotate(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(y[:, 0], x[:, 0])  # position 0: angle 0, no rotation
    assert not torch.allclose(y[:, 1:], x[:, 1:])
    # Per-row positions: row 1 at positions 3.. is rotated as row 0 is at those positions.
    cos_rows, sin_rows = rotary(torch.stack((torch.arange(5), torch.arange(3, 8))))
    assert cos_rows.shape == (2, 5, 3, 8)
    shifted = rotate(x, cos_rows, sin_rows)
    assert torch.equal(shifted[0], y[0])
    assert torch.allclose(shifted[1, :2], rotate(x[1:, :2], *rotary(torch.arange(3, 5)))[0])


def test_rmsnorm_output_has_unit_rms_and_layernorm_zero_mean():
    x = 3.0 * torch.randn(6, 32) + 2.0
    rms = make_norm(cfg_of(norm="rmsnorm"))(x)
    assert torch.allclose(rms.pow(2).mean(-1).sqrt(), torch.ones(6), atol=1e-3)
    assert rms.mean(-1).abs().max() > 0.1  # no mean subtraction
    ln = make_norm(cfg_of())(x)
    assert torch.allclose(ln.mean(-1), torch.zeros(6), atol=1e-5)


def test_qk_norm_bounds_the_attention_logits():
    """With QK-norm, scaling the input a thousandfold leaves attention unchanged (q and k are
    normalised per head); without it the softmax saturates."""
    torch.manual_seed(3)
    for qk_norm in (True, False):
        attn = build_model(cfg_of(qk_norm=qk_norm, bias=False)).blocks[0].attn
        x = torch.randn(1, 8, 32)
        changed = not torch.allclose(attn.weights(x), attn.weights(1000 * x), atol=1e-4)
        assert changed != qk_norm


def test_mlp_kinds_compute_their_nonlinearity_and_swiglu_keeps_the_parameter_count():
    torch.manual_seed(4)
    x = torch.randn(3, 32)
    relu2 = build_model(cfg_of(mlp="relu2")).blocks[0].mlp
    assert torch.allclose(relu2(x), relu2.proj(torch.relu(relu2.fc(x)) ** 2))
    swiglu = build_model(cfg_of(mlp="swiglu")).blocks[0].mlp
    gate, value = swiglu.fc(x).chunk(2, -1)
    assert torch.allclose(swiglu(x), swiglu.proj(torch.nn.functional.silu(gate) * value))
    for d in (128, 384, 768):
        gelu_params = 2 * 4 * d * d
        assert abs(3 * d * swiglu_hidden(d) - gelu_params) / gelu_params < 0.01
        assert swiglu_hidden(d) % 8 == 0


def test_logit_softcap_bounds_the_logits():
    torch.manual_seed(5)
    x = torch.randint(0, 37, (2, 8))
    for cap in (0.0, 2.0):
        torch.manual_seed(5)
        model = build_model(cfg_of(logit_softcap=cap, tie_embeddings=False))
        with torch.no_grad():
            model.lm_head.weight.mul_(1000)
        logits, _ = model(x)
        assert (logits.abs().max() <= 2.0) == (cap == 2.0)


def test_untied_head_is_its_own_matrix_and_zero_init_zeroes_the_projections():
    model = build_model(cfg_of(tie_embeddings=False, zero_init=True))
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()
    assert model.lm_head.weight.abs().sum() == 0
    assert all(b.attn.proj.weight.abs().sum() == 0 and b.mlp.proj.weight.abs().sum() == 0 for b in model.blocks)
    assert model.wte.weight.abs().sum() > 0


def test_parameter_roles_cover_every_parameter_once():
    model = build_model(cfg_of(**{**MODERN, "mlp": "swiglu"}))
    roles = model.parameter_roles()
    assert set(roles) == {n for n, _ in model.named_parameters()}
    assert roles["wte.weight"] == ("embedding", 1) and roles["lm_head.weight"] == ("head", 1)
    assert roles["blocks.0.attn.qkv.weight"] == ("matrix", 3)
    assert roles["blocks.0.mlp.fc.weight"] == ("matrix", 2)
    assert roles["blocks.1.ln_1.weight"] == ("vector", 1)
    tied = build_model(cfg_of()).parameter_roles()
    assert "lm_head.weight" not in tied and tied["wpe.weight"] == ("embedding", 1)


def test_flops_follow_the_variant():
    # SwiGLU keeps the FLOPs of the 4x MLP (within rounding); an untied head adds no FLOPs.
    classic = flops_per_token(cfg_of())["forward"]
    assert flops_per_token(cfg_of(mlp="swiglu"))["forward"] == pytest.approx(classic, rel=0.04)
    assert flops_per_token(cfg_of(tie_embeddings=False))["forward"] == classic


def test_one_loss_ignores_masked_targets():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 3], [4, 0, 1]])
    masked = targets.clone()
    masked[0, 1] = IGNORE
    kept = torch.tensor([[True, False, True], [True, True, True]])
    expected = torch.nn.functional.cross_entropy(logits[kept], targets[kept])
    assert torch.allclose(lm_loss(logits, masked), expected)
    assert torch.allclose(lm_loss(logits, masked, reduction="sum"), expected * 5)


def test_batch_loss_mask_reaches_the_loss():
    from gptlab.data.batch import Batch

    x = torch.tensor([[1, 2, 3]])
    batch = Batch(x, x, loss_mask=torch.tensor([[False, True, True]]))
    assert batch.loss_targets().tolist() == [[IGNORE, 2, 3]]
    assert Batch(x, x).loss_targets() is x


def test_value_embeddings_sit_on_alternate_layers_ending_at_the_last_and_reach_the_values():
    torch.manual_seed(6)
    model = build_model(cfg_of(value_embeds=True, n_layer=3)).eval()
    assert [b.attn.value_embed is not None for b in model.blocks] == [True, False, True]
    roles = model.parameter_roles()
    assert roles["blocks.2.attn.value_embed.weight"] == ("embedding", 1)
    attn = model.blocks[2].attn
    assert attn.value_gate.weight.abs().sum() == 0  # gate 2·sigmoid(0) = 1: the embedding added whole
    x, ids = torch.randn(1, 5, 32), torch.randint(0, 37, (1, 5))
    with torch.no_grad():
        base = attn(x, ids=ids)
        attn.value_embed.weight.zero_()  # without its embedding the layer is plain attention
        assert not torch.allclose(base, attn(x, ids=ids))
        attn.value_embed = None
        plain = attn(x)
        attn.value_embed = torch.nn.Embedding(37, 32).requires_grad_(False)
        attn.value_embed.weight.zero_()
        assert torch.allclose(attn(x, ids=ids), plain)
    with pytest.raises(ValueError, match="token ids"):
        attn(x)


def test_resid_mix_reads_the_embedding_into_every_block():
    """With resid_mix a block's input is λ_resid·x + λ_x0·x0: at λ = (1, 0) the block is the plain one,
    and x0 reaches the output through λ_x0."""
    torch.manual_seed(7)
    block = build_model(cfg_of(resid_mix=True)).blocks[1]
    assert (block.resid_lambda.item(), block.x0_lambda.item()) == pytest.approx((1.0, 0.1))
    x, x0 = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        mixed = block(x, x0=x0)
        block.x0_lambda.zero_()
        unmixed = block(x, x0=x0)
        block.resid_lambda, block.x0_lambda = None, None
        assert torch.equal(unmixed, block(x))
    assert not torch.allclose(mixed, unmixed)
    with pytest.raises(ValueError, match="x0"):
        build_model(cfg_of(resid_mix=True)).blocks[0](x)


@pytest.mark.parametrize("switch", ["value_embeds", "resid_mix", "smear"])
def test_new_switches_are_refused_for_the_encoder_decoder(switch):
    from gptlab.errors import GptlabError

    with pytest.raises(GptlabError, match=f"{switch}=True is built for arch='gpt' only"):
        cfg_of(arch="encdec", **{switch: True}).validate()


def test_smear_adds_the_gated_previous_token_and_starts_as_the_identity():
    torch.manual_seed(8)
    model = build_model(cfg_of(smear=True)).eval()
    ids = torch.randint(0, 37, (2, 6))
    with torch.no_grad():
        x0, _ = model.embed(ids, torch.arange(6))
        model.smear = None
        plain, _ = model.embed(ids, torch.arange(6))
        assert torch.equal(x0, plain)  # smear_lambda starts at 0
        model.smear = build_model(cfg_of(smear=True)).smear
        model.smear.smear_lambda.fill_(2.0)
        tok = model.wte(ids)
        smeared = model.smear(tok, model.wte, torch.cat((torch.full((2, 1), -1), ids[:, :-1]), 1))
    expected = tok.clone()
    expected[:, 1:] += 2.0 * 0.5 * tok[:, :-1]  # a zero gate is sigmoid(0) = 1/2; the first token has no predecessor
    assert torch.allclose(smeared, expected, atol=1e-6)


def test_smear_looks_back_across_feeds_of_both_caches():
    """A model with smear fed a prompt in two chunks, through either cache, gives the logits of one
    forward pass over the whole prompt: each cache hands the first token of a feed its predecessor."""
    from gptlab.inference.kv_cache import KVCache, SlotCache

    torch.manual_seed(9)
    model = build_model(cfg_of(smear=True, position="rope")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        ids = torch.randint(0, 37, (1, 9))
        full, _ = model(ids)
        for cache in (KVCache(model.cache_layout(), 1), SlotCache(model.cache_layout(), 2)):
            if isinstance(cache, SlotCache):
                cache.select([1])
            model(ids[:, :5], cache=cache)
            last, _ = model(ids[:, 5:], cache=cache)
            assert torch.allclose(last[0, -1], full[0, -1], atol=1e-5), type(cache).__name__
            assert cache.last[-1] == ids[0, -1]
        model.smear.smear_lambda.zero_()  # the look-back is part of what the cache had to hand over
        without, _ = model(ids)
        assert not torch.allclose(full[0, -1], without[0, -1], atol=1e-3)


def test_info_names_the_speedrun_switches_and_counts_their_parameters():
    from gptlab.model.accounting import describe

    cfg = cfg_of(value_embeds=True, resid_mix=True, smear=True, n_layer=3)
    assert "value_embeds=true, resid_mix=true, smear=true" in "\n".join(describe(cfg))
    plain = count_params(cfg_of(n_layer=3))
    more = count_params(cfg)
    # Two value-embedding tables (layers 0 and 2) and their gates, two scalars per block, smear's gate and λ.
    assert more.by_role["embedding"] - plain.by_role["embedding"] == 2 * 37 * 32
    assert more.total - plain.total == 2 * 37 * 32 + 2 * 32 * 2 + 3 * 2 + 32 + 1
    assert more.by_place["token embedding"] - plain.by_place["token embedding"] == 32 + 1
