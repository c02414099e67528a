"""Which transformers architecture expresses a gptlab model, and the config.json each side writes.

    classic (learned positions, LayerNorm with biases, GELU/ReLU² 4x)   -> GPT-2  (GPT2LMHeadModel)
    modern (RoPE, RMSNorm, gated or ReLU² MLP), no QK-norm              -> Llama  (LlamaForCausalLM)
    modern with QK-norm, no biases                                      -> Qwen3  (Qwen3ForCausalLM)

ReLU² has no gated twin by name, but Llama's and Qwen3's MLP is down(act(gate(x)) * up(x)); with
act=relu and gate = up = our fc it computes relu(a) * a = relu(a)², exactly. A combination none of the
three expresses (a logit soft-cap, RoPE with LayerNorm, ...) is refused with the reason.
"""

from __future__ import annotations

import math
from typing import Any

from gptlab.config import Mlp, ModelConfig
from gptlab.errors import GptlabError
from gptlab.model.layers import LAYERNORM_EPS, RMSNORM_EPS, mlp_hidden

GPT2_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu2": "relu2"}
# transformers' activation names read back: gelu_new is GPT-2's tanh GELU written out by hand.
GPT2_ACTS_IN: dict[str, Mlp] = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "relu2": "relu2",
}
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def _refuse(why: str) -> GptlabError:
    return GptlabError(f"no transformers architecture expresses this model: {why}")


def hf_architecture(cfg: ModelConfig) -> str:
    """'gpt2', 'llama' or 'qwen3': the transformers model type that computes what cfg computes,
    or one clear error naming the field that rules each out."""
    if cfg.arch != "gpt":
        raise _refuse(f"arch={cfg.arch!r} (GPT-2, Llama and Qwen3 are decoder-only)")
    if cfg.reward_head:
        raise _refuse("reward_head=true (a reward model's scalar head has no place in a causal language model)")
    if cfg.logit_softcap:
        raise _refuse(f"logit_softcap={cfg.logit_softcap} (GPT-2, Llama and Qwen3 do not cap logits)")
    if cfg.value_embeds:
        raise _refuse("value_embeds=true (GPT-2, Llama and Qwen3 have no value embeddings)")
    if cfg.smear:
        raise _refuse("smear=true (GPT-2, Llama and Qwen3 embed each token alone, without its predecessor)")
    if cfg.resid_mix:
        raise _refuse("resid_mix=true (GPT-2, Llama and Qwen3 add each block to the stream as it is, without x0)")
    if cfg.position == "learned":
        if cfg.norm != "layernorm":
            raise _refuse("norm='rmsnorm' with learned positions (GPT-2 has LayerNorm; Llama and Qwen3 use RoPE)")
        if not cfg.bias:
            raise _refuse("bias=false with learned positions (GPT-2's layers all have biases)")
        if cfg.qk_norm:
            raise _refuse("qk_norm=true with learned positions (GPT-2 has no QK-norm; Qwen3 uses RoPE)")
        if cfg.mlp not in GPT2_ACTS:
            raise _refuse(f"mlp={cfg.mlp!r} with learned positions (GPT-2's MLP is not gated)")
        return "gpt2"
    if cfg.norm != "rmsnorm":
        raise _refuse("norm='layernorm' with RoPE (Llama and Qwen3 use RMSNorm; GPT-2 has learned positions)")
    if cfg.mlp not in ("swiglu", "relu2"):
        raise _refuse(f"mlp={cfg.mlp!r} with RoPE (Llama's and Qwen3's MLPs are gated: swiglu or relu2 only)")
    if cfg.qk_norm:
        if cfg.bias:
            raise _refuse("qk_norm=true with bias=true (Qwen3's MLP has no biases)")
        return "qwen3"
    return "llama"


def hf_config(cfg: ModelConfig, bos_id: int | None, eos_id: int | None) -> dict[str, Any]:
    """config.json of the transformers model that expresses cfg (float32 weights)."""
    arch = hf_architecture(cfg)
    common = {
        "architectures": [CLASSES[arch]],
        "model_type": arch,
        "vocab_size": cfg.vocab_size,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": cfg.tie_embeddings,
        "dtype": "float32",
        "use_cache": True,
    }
    if arch == "gpt2":
        return common | {
            "n_positions": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": None,
            "activation_function": GPT2_ACTS[cfg.mlp],
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": LAYERNORM_EPS,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }
    out = common | {
        "hidden_size": cfg.n_embd,
        "intermediate_size": mlp_hidden(cfg),
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu" if cfg.mlp == "swiglu" else "relu",
        # Positions past block_size work with RoPE; this is what the model was trained on.
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": RMSNORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "rope_theta": cfg.rope_base,  # where transformers 4 reads it
        "attention_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
    }
    if arch == "llama":
        out["mlp_bias"] = cfg.bias
    else:
        out |= {"use_sliding_window": False, "sliding_window": None}
    return out


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """The gptlab ModelConfig that computes what a transformers config.json describes, or one
    clear error naming what gptlab cannot express (or the field that holds the wrong kind of value)."""
    arch = hf.get("model_type")
    if not isinstance(arch, str) or arch not in CLASSES:
        raise GptlabError(f"cannot import model_type={arch!r} (supported: {', '.join(CLASSES)})")
    cfg = _gpt2_config(hf) if arch == "gpt2" else _rope_config(hf, arch)
    try:
        cfg.validate()
    except GptlabError as exc:
        raise GptlabError(f"cannot import {arch}: config.json gives {exc}") from None
    return cfg


_MISSING = object()


def _field(hf: dict[str, Any], key: str, default: Any, kind: type, what: str, arch: Any = None) -> Any:
    """hf[key] (default where absent; no default: required), refused unless it is exactly a kind:
    a JSON 64.9, "64" or true is not a layer count, and transformers would not read it as one."""
    value, arch = hf.get(key, default), arch or hf.get("model_type")
    if value is _MISSING:
        raise GptlabError(f"cannot import {arch}: config.json has no {key}")
    ok = isinstance(value, kind) and (isinstance(value, bool) == (kind is bool))
    if kind is float:  # a whole number is a number; a boolean is not
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise GptlabError(f"cannot import {arch}: {key}={value!r} is not {what}")
    return float(value) if kind is float else value


def _int(hf: dict[str, Any], key: str, default: Any = _MISSING) -> int:
    return _field(hf, key, default, int, "a whole number")


def _bool(hf: dict[str, Any], key: str, default: Any = _MISSING) -> bool:
    return _field(hf, key, default, bool, "true or false")


def _need(hf: dict[str, Any], key: str, wanted: Any, default: Any, why: str) -> None:
    """Refuse hf unless hf[key] (default: what transformers assumes when the key is absent) is wanted."""
    value = hf.get(key, default)
    if isinstance(wanted, float):
        same = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value - wanted) <= 1e-12
    else:  # the same value of the same kind: true is not 1
        same = type(value) is type(wanted) and value == wanted
    if not same:
        raise GptlabError(f"cannot import {hf.get('model_type')}: {key}={value!r} ({why})")


def _gpt2_config(hf: dict[str, Any]) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if not isinstance(act, str) or act not in GPT2_ACTS_IN:
        raise GptlabError(f"cannot import gpt2: activation_function={act!r} (gptlab has {', '.join(GPT2_ACTS_IN)})")
    _need(hf, "n_inner", None, None, "gptlab's GELU MLP is 4 x n_embd wide")  # None means 4x
    _need(hf, "layer_norm_epsilon", LAYERNORM_EPS, 1e-5, f"gptlab's LayerNorm uses eps={LAYERNORM_EPS}")
    _need(hf, "scale_attn_weights", True, True, "gptlab scales attention by 1/sqrt(head size)")
    _need(hf, "scale_attn_by_inverse_layer_idx", False, False, "gptlab does not scale by layer")
    return ModelConfig(
        vocab_size=_int(hf, "vocab_size", 50257),
        block_size=_int(hf, "n_positions", 1024),
        n_layer=_int(hf, "n_layer", 12),
        n_head=_int(hf, "n_head", 12),
        n_embd=_int(hf, "n_embd", 768),
        dropout=0.0,
        bias=True,
        position="learned",
        norm="layernorm",
        mlp=GPT2_ACTS_IN[act],
        tie_embeddings=_bool(hf, "tie_word_embeddings", True),
    )


def _rope_config(hf: dict[str, Any], arch: str) -> ModelConfig:
    n_embd, n_head = _int(hf, "hidden_size"), _int(hf, "num_attention_heads")
    if n_head <= 0:
        raise GptlabError(f"cannot import {arch}: num_attention_heads={n_head} must be > 0")
    _need(hf, "num_key_value_heads", n_head, n_head, "gptlab has no grouped-query attention")
    _need(hf, "rms_norm_eps", RMSNORM_EPS, 1e-6, f"gptlab's RMSNorm uses eps={RMSNORM_EPS}")
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    if not isinstance(rope, dict):
        raise GptlabError(f"cannot import {arch}: rope_parameters={rope!r} is not an object")
    if (rope.get("rope_type") or rope.get("type") or "default") != "default" or hf.get("rope_scaling"):
        raise GptlabError(f"cannot import {arch}: RoPE scaling {rope} (gptlab has plain RoPE)")
    act = hf.get("hidden_act", "silu")
    acts: dict[str, Mlp] = {"silu": "swiglu", "relu": "relu2"}
    mlp = acts.get(act) if isinstance(act, str) else None
    if mlp is None:
        raise GptlabError(f"cannot import {arch}: hidden_act={act!r} (gptlab has silu for SwiGLU, relu for ReLU²)")
    bias = _bool(hf, "attention_bias", False)
    if arch == "llama":
        _need(hf, "mlp_bias", bias, False, "gptlab's bias switch covers attention and MLP together")
    elif bias:
        raise GptlabError(
            "cannot import qwen3: attention_bias=true (its MLP has none; gptlab's bias switch covers both)"
        )
    if arch == "qwen3" and hf.get("use_sliding_window"):
        raise GptlabError("cannot import qwen3: use_sliding_window=true (gptlab attends to the whole context)")
    cfg = ModelConfig(
        vocab_size=_int(hf, "vocab_size"),
        block_size=_int(hf, "max_position_embeddings", 2048),
        n_layer=_int(hf, "num_hidden_layers"),
        n_head=n_head,
        n_embd=n_embd,
        dropout=0.0,
        bias=bias,
        position="rope",
        rope_base=_field(rope, "rope_theta", 10000.0, float, "a finite number", arch),
        norm="rmsnorm",
        qk_norm=arch == "qwen3",
        mlp=mlp,
        tie_embeddings=_bool(hf, "tie_word_embeddings", False),
    )
    _need(hf, "head_dim", cfg.head_dim, cfg.head_dim, "gptlab's head size is hidden_size / heads")
    _need(
        hf,
        "intermediate_size",
        mlp_hidden(cfg),
        None,
        f"gptlab's {mlp} MLP is {mlp_hidden(cfg)} wide at hidden_size={n_embd}",
    )
    return cfg
