"""`gptlab export RUN --format hf --out DIR`: a run as a transformers checkpoint directory.

    DIR/config.json               the transformers config of the architecture that expresses the model
    DIR/model.safetensors         the weights under that architecture's names (float32)
    DIR/generation_config.json    end-of-text id and the run's sampling temperature and top-k
    DIR/tokenizer.json            the tokenizer for the `tokenizers` library (same ids as gptlab's)
    DIR/tokenizer_config.json     so that AutoTokenizer loads it as it is
    DIR/README.md                 the model card: training data and figures from the run

The directory is written beside DIR under a temporary name and renamed into place whole; what a
killed export left there is swept by the next one (outputs.staged_directory).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from gptlab.errors import GptlabError
from gptlab.fileio import plain_mode
from gptlab.interop.architectures import hf_architecture, hf_config
from gptlab.interop.hf_gpt2 import to_gpt2_state_dict
from gptlab.interop.hf_llama import to_llama_state_dict
from gptlab.interop.hf_tokenizer import end_of_text_id, to_hf_tokenizer, tokenizer_config
from gptlab.interop.model_card import model_card
from gptlab.model.gpt import GPT
from gptlab.outputs import check_output_dir, staged_directory
from gptlab.runs import load_run

FORMATS = ("hf",)


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under the names of its transformers twin."""
    return to_gpt2_state_dict(model) if hf_architecture(model.config) == "gpt2" else to_llama_state_dict(model)


def transformers_model(model: GPT):
    """The same weights as a transformers model in memory (eval mode; needs transformers installed):
    what loading an export gives, without the files."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = hf_config(model.config, None, None)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):  # a tied head is the embedding
        raise GptlabError(
            f"weight map out of step with transformers: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    hf.tie_weights()
    return hf.eval()


def export_run(run: str | Path, out: str | Path, fmt: str = "hf") -> Path:
    """Write the run's current checkpoint as a transformers directory at out; return it."""
    if fmt not in FORMATS:
        raise GptlabError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    out = Path(out)
    check_output_dir(out, [("RUN", run)])  # a new or empty directory only: an export is never merged into another
    loaded = load_run(run, "cpu")
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.config
    arch = hf_architecture(cfg.model)  # refuses what no architecture expresses, before anything is written
    assert isinstance(model, GPT)  # hf_architecture refused arch=encdec
    eot = end_of_text_id(tok)
    generation = {
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "do_sample": True,
        "temperature": cfg.train.sample_temperature,
        "top_k": cfg.train.sample_top_k,
        "max_length": cfg.model.block_size,
    }
    with staged_directory(out, "export") as staging:
        weights = hf_state_dict(model)
        try:
            save_file(weights, str(staging / "model.safetensors"), metadata={"format": "pt"})
        except SafetensorError as exc:  # the library's own type for a failed write (a full disk, say)
            raise GptlabError(f"cannot write {out / 'model.safetensors'}: {str(exc).splitlines()[0]}") from None
        plain_mode(staging / "model.safetensors")  # safetensors writes it 0600
        write = {
            "config.json": hf_config(cfg.model, eot, eot),
            "generation_config.json": generation,
            "tokenizer_config.json": tokenizer_config(tok, cfg.model.block_size),
        }
        for name, data in write.items():
            (staging / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        to_hf_tokenizer(tok).save(str(staging / "tokenizer.json"))
        params = sum(p.numel() for p in model.parameters())
        (staging / "README.md").write_text(model_card(loaded, arch, params), encoding="utf-8")
    return out
