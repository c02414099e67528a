import pytest
import torch

from gptlab.config import ModelConfig, RunConfig
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json
from gptlab.model.gpt import GPT
from gptlab.runs import load_run, save_weights
from gptlab.tokenizers import CharTokenizer


def _run(tmp_path):
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(vocab_size=12, block_size=16, n_layer=2, n_head=2, n_embd=32))
    model = GPT(cfg.model).eval()
    atomic_write_json(tmp_path / "config.json", cfg.to_dict())
    CharTokenizer("abcdefghijk\n").save(tmp_path / "tokenizer.json")
    save_weights(model, tmp_path / "model.safetensors", step=42)
    return model


def test_save_then_load_gives_identical_logits(tmp_path):
    model = _run(tmp_path)
    loaded = load_run(tmp_path)
    x = torch.randint(0, 12, (3, 16))
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded.model(x)[0])
    assert loaded.step == 42
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.wte.weight.data_ptr()  # still tied


def test_corrupt_weights_are_a_clear_error(tmp_path):
    _run(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(GptlabError, match="corrupt checkpoint"):
        load_run(tmp_path)


def test_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(GptlabError, match="is not a gptlab run"):
        load_run(tmp_path)


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os

    from gptlab.fileio import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left behind
