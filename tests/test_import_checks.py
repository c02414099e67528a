"""`gptlab import` of hostile checkpoints: every tensor is checked against config.json from the safetensors
headers before any memory is spent, only floating finite weights that config.json has a place for are taken,
config.json's numbers are of the kind they claim, and nothing outside the checkpoint directory is read.
Each refusal is one line; checkpoints are tiny, written with gptlab's own export map (no transformers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_clean_error, cli_in_process
from gptlab.config import ModelConfig
from gptlab.interop import import_hf
from gptlab.interop.architectures import hf_config
from gptlab.interop.export import hf_state_dict
from gptlab.interop.hf_tokenizer import to_hf_tokenizer
from gptlab.model import build_model
from gptlab.runs import load_run
from gptlab.tokenizers import CharTokenizer

TEXT = "hello world, a tiny corpus\n"
GPT2 = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16}
LLAMA = GPT2 | {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "tie_embeddings": False}


def checkpoint(where: Path, shape: dict = GPT2, **edit) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint directory as `gptlab export` writes it (random weights), its config.json edited."""
    tok = CharTokenizer.train([TEXT])
    cfg = ModelConfig(vocab_size=tok.vocab_size, **shape)
    torch.manual_seed(0)
    weights = hf_state_dict(build_model(cfg))
    where.mkdir(parents=True)
    save_file(weights, str(where / "model.safetensors"))
    (where / "config.json").write_text(json.dumps(hf_config(cfg, None, None) | edit))
    to_hf_tokenizer(tok).save(str(where / "tokenizer.json"))
    return where, weights


def import_(capsys, src: Path, out: Path):
    return cli_in_process(capsys, "import", src, "--out", out)


@pytest.fixture
def no_real_model(monkeypatch):
    """Fail the test if a refused import builds the model anywhere but on the meta device."""
    real = import_hf.build_model

    def meta_only(cfg, device=None):
        assert device == "meta", "the model was allocated before the weights were checked"
        return real(cfg, device)

    monkeypatch.setattr(import_hf, "build_model", meta_only)


def test_a_faithful_checkpoint_imports(tmp_path, capsys):
    src, weights = checkpoint(tmp_path / "src")
    assert import_(capsys, src, tmp_path / "run").returncode == 0
    run = load_run(tmp_path / "run")
    assert torch.equal(run.model.state_dict()["wte.weight"], weights["transformer.wte.weight"])


@pytest.mark.parametrize(
    "edit, needle",
    [
        ({"n_layer": 10**7}, "n_layer=10000000 must be at most"),
        ({"n_layer": 3}, "has no transformer.h.2."),
        ({"n_embd": 4096, "n_head": 2}, "wte.weight is [19, 16] in the weights, but config.json implies [19, 4096]"),
        ({"n_embd": 10**9}, "must be at most"),
        ({"n_positions": 10**6}, "transformer.wpe.weight is [16, 16]"),
        ({"vocab_size": 2**31}, "transformer.wte.weight"),
    ],
)
def test_sizes_are_checked_against_the_headers_before_anything_is_allocated(
    edit, needle, tmp_path, capsys, no_real_model
):
    src, _ = checkpoint(tmp_path / "src", **edit)
    assert_clean_error(import_(capsys, src, tmp_path / "run"), needle)
    assert not (tmp_path / "run").exists()


def test_weights_config_json_has_no_place_for_are_refused(tmp_path, capsys, no_real_model):
    src, _ = checkpoint(tmp_path / "src", n_layer=1)  # a 1-layer config over 2 layers' weights
    assert_clean_error(import_(capsys, src, tmp_path / "run"), "no place for", "transformer.h.1.")


@pytest.mark.parametrize(
    "edit, needle",
    [
        ({"n_embd": "16"}, "n_embd='16' is not a whole number"),
        ({"n_embd": 16.0}, "n_embd=16.0 is not a whole number"),
        ({"n_embd": 64.9}, "is not a whole number"),
        ({"n_layer": True}, "n_layer=True is not a whole number"),
        ({"tie_word_embeddings": 1}, "tie_word_embeddings=1 is not true or false"),
        ({"model_type": ["gpt2"]}, "cannot import model_type=['gpt2']"),
        ({"model_type": {"a": 1}}, "cannot import model_type"),
        ({"activation_function": ["gelu"]}, "activation_function"),
        ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon"),
    ],
)
def test_config_json_values_must_be_of_their_kind(edit, needle, tmp_path, capsys):
    src, _ = checkpoint(tmp_path / "src", **edit)
    assert_clean_error(import_(capsys, src, tmp_path / "run"), needle)


@pytest.mark.parametrize(
    "edit, needle",
    [
        ({"hidden_size": 2.5}, "hidden_size=2.5"),
        ({"rope_parameters": ["default"]}, "rope_parameters"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": "big"}}, "rope_theta='big'"),
        ({"hidden_act": ["silu"]}, "hidden_act"),
        ({"num_hidden_layers": None}, "num_hidden_layers=None"),
        ({"num_attention_heads": 0}, "num_attention_heads=0"),
    ],
)
def test_llama_config_values_must_be_of_their_kind(edit, needle, tmp_path, capsys):
    src, _ = checkpoint(tmp_path / "src", LLAMA, **edit)
    assert_clean_error(import_(capsys, src, tmp_path / "run"), needle)


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"model_type": "gpt2", "n_embd": Infinity}', "Infinity is not a JSON number"),
        ('{"model_type": "gpt2", "n_embd": NaN}', "NaN is not a JSON number"),
        ('{"model_type": "gpt2", "n_embd": 1e999}', "out of range"),
        ('{"model_type": "gpt2", "n_embd": ' + "9" * 5000 + "}", "not valid JSON"),
        ('{"model_type": "gpt2", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper"),
        ('{"model_type": "gpt2", "x": ' + "[" * 500 + "]" * 500 + "}", "nested deeper"),
        ('{"model_type": "gpt2", "\\ud800": 1}', "lone surrogate"),
        ("[1, 2]", "not a JSON object"),
        ("\xff", "not valid JSON"),
    ],
)
def test_a_hostile_config_json_is_one_line(text, needle, tmp_path, capsys):
    src, _ = checkpoint(tmp_path / "src")
    (src / "config.json").write_text(text, encoding="utf-8", errors="surrogateescape")
    assert_clean_error(import_(capsys, src, tmp_path / "run"), needle)


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda w: w | {"transformer.wte.weight": w["transformer.wte.weight"].to(torch.int32)}, "holds I32 values"),
        (lambda w: w | {"transformer.ln_f.bias": w["transformer.ln_f.bias"] > 0}, "holds BOOL values"),
        (lambda w: w | {"transformer.h.0.mlp.c_fc.bias": torch.full((64,), float("nan"))}, "NaN or infinite"),
        (lambda w: w | {"transformer.ln_f.weight": torch.full((16,), float("inf"))}, "NaN or infinite"),
        (lambda w: w | {"lm_head.weight": torch.zeros_like(w["transformer.wte.weight"])}, "lm_head.weight differs"),
        (lambda w: w | {"extra": torch.zeros(1)}, "no place for (extra)"),
    ],
)
def test_only_floating_finite_weights_in_their_place_are_taken(change, needle, tmp_path, capsys):
    src, weights = checkpoint(tmp_path / "src")
    save_file(change(weights), str(src / "model.safetensors"))
    assert_clean_error(import_(capsys, src, tmp_path / "run"), needle)


def test_a_bare_gpt2_checkpoint_with_its_mask_buffers_and_a_stored_tied_head_imports(tmp_path, capsys):
    src, weights = checkpoint(tmp_path / "src")
    bare = {k.removeprefix("transformer."): v for k, v in weights.items()}
    bare |= {"h.0.attn.bias": torch.ones(1, 1, 16, 16), "lm_head.weight": weights["transformer.wte.weight"].clone()}
    save_file(bare, str(src / "model.safetensors"))
    assert import_(capsys, src, tmp_path / "run").returncode == 0


def test_mismatched_q_k_v_shapes_are_one_line(tmp_path, capsys):
    src, weights = checkpoint(tmp_path / "src", LLAMA)
    weights["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 16)
    save_file(weights, str(src / "model.safetensors"))
    assert_clean_error(import_(capsys, src, tmp_path / "run"), "k_proj.weight is [8, 16]")


def shard(src: Path, weight_map: object) -> None:
    """Replace the single weights file by an index (its file renamed shard.safetensors)."""
    (src / "model.safetensors").rename(src / "shard.safetensors")
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_a_sharded_checkpoint_imports(tmp_path, capsys):
    src, weights = checkpoint(tmp_path / "src")
    shard(src, dict.fromkeys(weights, "shard.safetensors"))
    assert import_(capsys, src, tmp_path / "run").returncode == 0


def test_the_index_names_only_files_inside_the_checkpoint(tmp_path, capsys):
    outside, weights = checkpoint(tmp_path / "outside")
    src, _ = checkpoint(tmp_path / "src")
    shard(src, dict.fromkeys(weights, "shard.safetensors"))
    for name in (str(outside / "model.safetensors"), "../outside/model.safetensors", "/dev/zero"):
        (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": name}}))
        assert_clean_error(import_(capsys, src, tmp_path / "run"), "outside it")
    (src / "link.safetensors").symlink_to(outside / "model.safetensors")
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "link.safetensors"}}))
    assert_clean_error(import_(capsys, src, tmp_path / "run"), "outside it")
    (src / "model.safetensors.index.json").unlink()
    (src / "model.safetensors").symlink_to(outside / "model.safetensors")  # the unsharded file, too
    assert_clean_error(import_(capsys, src, tmp_path / "run"), "outside it")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "index, needle",
    [
        ([1, 2], "not a JSON object"),
        ({"weight_map": ["shard.safetensors"]}, "no weight_map"),
        ({"weight_map": {"x": 1}}, "no weight_map"),
        ({"weight_map": {"x": "missing.safetensors"}}, "not a file"),
        ({"weight_map": {"x": "."}}, "not a file"),
    ],
)
def test_a_malformed_index_is_one_line(index, needle, tmp_path, capsys):
    src, weights = checkpoint(tmp_path / "src")
    shard(src, {})
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_clean_error(import_(capsys, src, tmp_path / "run"), needle)
