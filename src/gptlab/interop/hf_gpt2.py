"""gptlab's classic GPT as transformers' GPT-2: the one map between their parameter names.

GPT-2 keeps its linear layers as Conv1D, whose weights are stored (in, out): the transpose of
torch's Linear. Which configs have a GPT-2 twin is decided in architectures.py.
"""

from __future__ import annotations

from typing import Any

import torch

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.interop.architectures import hf_architecture
from gptlab.model.gpt import GPT

# Block parameters, ours -> GPT-2's.
BLOCK_NAMES = {
    "ln_1": "ln_1",
    "ln_2": "ln_2",
    "attn.qkv": "attn.c_attn",
    "attn.proj": "attn.c_proj",
    "mlp.fc": "mlp.c_fc",
    "mlp.proj": "mlp.c_proj",
}
PREFIX = "transformer."
# Buffers that older GPT-2 checkpoints carry beside the weights: the causal mask, computed, not learned.
BUFFERS = r"transformer\.h\.\d+\.attn\.(bias|masked_bias)"


def _pairs(cfg: ModelConfig) -> list[tuple[str, str, bool]]:
    """(our name, GPT-2's name, transposed) for every stored tensor."""
    pairs = [
        ("wte.weight", "transformer.wte.weight", False),
        ("wpe.weight", "transformer.wpe.weight", False),
        ("ln_f.weight", "transformer.ln_f.weight", False),
        ("ln_f.bias", "transformer.ln_f.bias", False),
    ]
    for i in range(cfg.n_layer):
        for mine, hf in BLOCK_NAMES.items():
            pairs.append((f"blocks.{i}.{mine}.weight", f"transformer.h.{i}.{hf}.weight", not mine.startswith("ln")))
            pairs.append((f"blocks.{i}.{mine}.bias", f"transformer.h.{i}.{hf}.bias", False))
    if not cfg.tie_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight", False))
    return pairs


def to_gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under transformers' GPT2LMHeadModel names (a tied lm_head left out, as GPT-2 saves it)."""
    cfg = model.config
    if hf_architecture(cfg) != "gpt2":
        raise GptlabError("this model is not GPT-2 shaped (learned positions, LayerNorm, biases)")
    ours = model.state_dict()
    return {hf: (ours[mine].t() if transposed else ours[mine]).contiguous() for mine, hf, transposed in _pairs(cfg)}


def with_prefix(theirs: dict[str, Any]) -> dict[str, Any]:
    """GPT-2's names as GPT2LMHeadModel has them: a bare GPT2Model checkpoint lacks the 'transformer.' prefix."""
    if any(k.startswith(PREFIX) for k in theirs):
        return theirs
    return {(k if k == "lm_head.weight" else PREFIX + k): v for k, v in theirs.items()}


def from_gpt2_state_dict(cfg: ModelConfig, theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPT-2 weights (with or without the 'transformer.' prefix) under our names, for cfg."""
    theirs = with_prefix(theirs)
    ours = {}
    for mine, hf, transposed in _pairs(cfg):
        if hf not in theirs:
            raise GptlabError(f"the checkpoint has no {hf}")
        ours[mine] = (theirs[hf].t() if transposed else theirs[hf]).contiguous()
    if cfg.tie_embeddings:
        check_tied(theirs, ours["wte.weight"])
        ours["lm_head.weight"] = ours["wte.weight"]
    return ours


def check_tied(theirs: dict[str, torch.Tensor], embedding: torch.Tensor) -> None:
    """A tied model's stored head must be its embedding: a different one would be dropped unseen."""
    head = theirs.get("lm_head.weight")
    if head is not None and not torch.equal(head, embedding):
        raise GptlabError("tie_word_embeddings is true, but the checkpoint's lm_head.weight differs from its embedding")
