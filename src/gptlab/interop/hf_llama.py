"""gptlab's modern GPT as transformers' Llama or Qwen3: the one map between their parameter names.

Ours fuses q, k and v in one matrix (rows q | k | v) and the gated MLP's gate and value in one
(rows gate | value); theirs keeps them apart. ReLU² is exported as act=relu with gate = up = our fc
(see architectures.py), and read back only where gate and up are equal.
"""

from __future__ import annotations

import torch

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.interop.hf_gpt2 import check_tied
from gptlab.model.gpt import GPT

# Buffers that some Llama checkpoints carry beside the weights: RoPE's frequencies, computed, not learned.
BUFFERS = r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"


def _norms(cfg: ModelConfig, i: int) -> list[tuple[str, str]]:
    pairs = [
        (f"blocks.{i}.ln_1.weight", f"model.layers.{i}.input_layernorm.weight"),
        (f"blocks.{i}.ln_2.weight", f"model.layers.{i}.post_attention_layernorm.weight"),
    ]
    if cfg.qk_norm:
        pairs += [
            (f"blocks.{i}.attn.q_norm.weight", f"model.layers.{i}.self_attn.q_norm.weight"),
            (f"blocks.{i}.attn.k_norm.weight", f"model.layers.{i}.self_attn.k_norm.weight"),
        ]
    return pairs


def to_llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under LlamaForCausalLM / Qwen3ForCausalLM names (a tied lm_head left out)."""
    cfg, ours = model.config, model.state_dict()
    theirs = {"model.embed_tokens.weight": ours["wte.weight"], "model.norm.weight": ours["ln_f.weight"]}
    if not cfg.tie_embeddings:
        theirs["lm_head.weight"] = ours["lm_head.weight"]
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        theirs |= {hf: ours[mine] for mine, hf in _norms(cfg, i)}
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        for kind in kinds:
            q, k, v = ours[f"blocks.{i}.attn.qkv.{kind}"].chunk(3, dim=0)
            fc = ours[f"blocks.{i}.mlp.fc.{kind}"]
            gate, up = fc.chunk(2, dim=0) if cfg.mlp == "swiglu" else (fc, fc.clone())
            theirs |= {
                f"{attn}.q_proj.{kind}": q,
                f"{attn}.k_proj.{kind}": k,
                f"{attn}.v_proj.{kind}": v,
                f"{attn}.o_proj.{kind}": ours[f"blocks.{i}.attn.proj.{kind}"],
                f"{mlp}.gate_proj.{kind}": gate,
                f"{mlp}.up_proj.{kind}": up,
                f"{mlp}.down_proj.{kind}": ours[f"blocks.{i}.mlp.proj.{kind}"],
            }
    return {name: t.contiguous() for name, t in theirs.items()}


def from_llama_state_dict(cfg: ModelConfig, theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Llama / Qwen3 weights under our names, for cfg."""

    def get(name: str) -> torch.Tensor:
        if name not in theirs:
            raise GptlabError(f"the checkpoint has no {name}")
        return theirs[name]

    ours = {"wte.weight": get("model.embed_tokens.weight"), "ln_f.weight": get("model.norm.weight")}
    if cfg.tie_embeddings:
        check_tied(theirs, ours["wte.weight"])
    ours["lm_head.weight"] = ours["wte.weight"] if cfg.tie_embeddings else get("lm_head.weight")
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        ours |= {mine: get(hf) for mine, hf in _norms(cfg, i)}
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        for kind in kinds:
            ours[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([get(f"{attn}.{p}_proj.{kind}") for p in "qkv"])
            ours[f"blocks.{i}.attn.proj.{kind}"] = get(f"{attn}.o_proj.{kind}")
            gate, up = get(f"{mlp}.gate_proj.{kind}"), get(f"{mlp}.up_proj.{kind}")
            if cfg.mlp == "swiglu":
                ours[f"blocks.{i}.mlp.fc.{kind}"] = torch.cat([gate, up])
            elif torch.equal(gate, up):
                ours[f"blocks.{i}.mlp.fc.{kind}"] = gate
            else:
                raise GptlabError(
                    "cannot import a relu-gated MLP whose gate and up differ (gptlab's ReLU² "
                    "is relu(x W)², i.e. gate = up)"
                )
            ours[f"blocks.{i}.mlp.proj.{kind}"] = get(f"{mlp}.down_proj.{kind}")
    return {name: t.contiguous() for name, t in ours.items()}
