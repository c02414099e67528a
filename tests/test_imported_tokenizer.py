"""A run with an imported tokenizer that lacks characters (a WordLevel vocabulary with no unknown token, as
`gptlab export` writes a char tokenizer): text it cannot encode, and lone surrogates, are one line on the
command line and a 400 from the server, never a traceback or a 500."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_clean_error, cli_in_process
from gptlab.config import ModelConfig
from gptlab.errors import GptlabError
from gptlab.interop.architectures import hf_config
from gptlab.interop.export import hf_state_dict
from gptlab.interop.hf_tokenizer import to_hf_tokenizer
from gptlab.model import build_model
from gptlab.tokenizers import CharTokenizer, load_tokenizer

TEXT = "hello world\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An imported run whose tokenizer knows only the characters of TEXT."""
    root = tmp_path_factory.mktemp("imported")
    tok = CharTokenizer.train([TEXT])
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=16)
    torch.manual_seed(0)
    src = root / "src"
    src.mkdir()
    save_file(hf_state_dict(build_model(cfg)), str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(hf_config(cfg, None, None)))
    to_hf_tokenizer(tok).save(str(src / "tokenizer.json"))
    from gptlab.interop.import_hf import import_checkpoint

    return import_checkpoint(src, root / "run")


@pytest.mark.parametrize("text, needle", [("hello Zq", "'Z', 'q'"), ("hi \ud800", "lone surrogate")])
def test_the_tokenizer_says_what_it_cannot_encode(run, text, needle):
    tok = load_tokenizer(run / "tokenizer.json")
    assert tok.encode("hello") == tok.encode("hel") + tok.encode("lo")
    with pytest.raises(GptlabError, match=needle):
        tok.encode(text)
    with pytest.raises(GptlabError, match="not in this tokenizer"):
        tok.decode([10**12])


@pytest.mark.parametrize("bad", ["hello Z", "hello \ud800"])
def test_commands_with_the_imported_tokenizer_are_one_line(run, bad, tmp_path, capsys):
    for args in (
        ["sample", run, "--prompt", bad, "--max-new-tokens", "2"],
        ["tokenize", run, bad],
        ["trace", run, "--prompt", bad],
        ["step", run, "--text", bad, "--device", "cpu"],  # an imported run: no optimizer state, a fresh one
    ):
        assert_clean_error(cli_in_process(capsys, *args), "tokenizer" if "Z" in bad else "surrogate")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\n" * 50 + "Z\n", encoding="utf-8")
    proc = cli_in_process(capsys, "prepare", corpus, "--tokenizer", run, "--out", tmp_path / "data", "--workers", "1")
    # prepare's progress line comes first; the error is its last line
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "'Z'" in proc.stderr.splitlines()[-1]


def test_the_server_answers_400_not_500(run):
    from fastapi.testclient import TestClient

    from gptlab.serve.app import create_app

    with TestClient(create_app(run, "cpu"), raise_server_exceptions=False) as client:
        for bad in ("hello Z", "hello \ud800"):
            body = json.dumps({"prompt": bad, "max_tokens": 2}).encode()  # json.dumps escapes the surrogate
            r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            body = json.dumps({"text": bad}).encode()
            r = client.post("/api/next", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
        assert client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2}).status_code == 200


def test_an_imported_run_takes_a_lesson_step_with_a_fresh_optimizer(run, capsys):
    proc = cli_in_process(capsys, "step", run, "--text", TEXT, "--steps", "5", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "no optimizer state" in report["note"] and report["loss_after"] < report["loss_before"]
