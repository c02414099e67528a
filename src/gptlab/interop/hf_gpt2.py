"""gptlab's classic GPT as transformers' GPT-2: the one map between their parameter names.

Only the classic variant has a GPT-2 twin (learned positions, LayerNorm with biases, GELU, tied
head, no soft-cap); other variants are refused with the field that differs.
"""

from __future__ import annotations

import torch

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError

# Block parameters, ours -> GPT-2's. GPT-2 keeps its linear layers as Conv1D with (in, out) weights.
BLOCK_NAMES = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
               "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
GPT2_VARIANT = {"arch": "gpt", "position": "learned", "norm": "layernorm", "qk_norm": False, "mlp": "gelu",
                "tie_embeddings": True, "logit_softcap": 0.0, "bias": True}


def check_gpt2_shaped(cfg: ModelConfig) -> None:
    """Refuse a config transformers' GPT-2 cannot represent, naming the first field that differs."""
    for name, value in GPT2_VARIANT.items():
        if getattr(cfg, name) != value:
            raise GptlabError(f"{name}={getattr(cfg, name)!r} has no GPT-2 equivalent (GPT-2 needs {name}={value!r})")


def to_gpt2_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under transformers' GPT2LMHeadModel names (without the tied lm_head)."""
    check_gpt2_shaped(model.config)
    ours = model.state_dict()
    theirs = {"transformer.wte.weight": ours["wte.weight"], "transformer.wpe.weight": ours["wpe.weight"],
              "transformer.ln_f.weight": ours["ln_f.weight"], "transformer.ln_f.bias": ours["ln_f.bias"]}
    for i in range(model.config.n_layer):
        for mine, hf in BLOCK_NAMES.items():
            w, b = ours[f"blocks.{i}.{mine}.weight"], ours[f"blocks.{i}.{mine}.bias"]
            theirs[f"transformer.h.{i}.{hf}.weight"] = w if mine.startswith("ln") else w.t().contiguous()
            theirs[f"transformer.h.{i}.{hf}.bias"] = b
    return theirs
