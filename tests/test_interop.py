"""The GPT-2 name map: every weight placed, transposed where GPT-2 uses Conv1D; other variants refused."""

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.interop.hf_gpt2 import to_gpt2_state_dict
from gptlab.model import build_model


def test_classic_weights_map_to_gpt2_names_with_conv1d_transposes():
    model = build_model(ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16))
    theirs = to_gpt2_state_dict(model)
    ours = model.state_dict()
    assert len(theirs) == len(ours) - 1  # everything but the tied lm_head
    assert torch.equal(theirs["transformer.h.1.attn.c_attn.weight"], ours["blocks.1.attn.qkv.weight"].t())
    assert torch.equal(theirs["transformer.h.0.ln_2.bias"], ours["blocks.0.ln_2.bias"])


@pytest.mark.parametrize("field, value", [("position", "rope"), ("mlp", "swiglu"), ("tie_embeddings", False)])
def test_variants_without_a_gpt2_twin_are_refused(field, value):
    model = build_model(ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, **{field: value}))
    with pytest.raises(GptlabError, match=f"{field}=.* has no GPT-2 equivalent"):
        to_gpt2_state_dict(model)
