"""Hugging Face export and import: transformers loads what gptlab writes and computes the same
logits; gptlab imports what transformers writes and computes the same logits; tokenizers give the
same ids on both sides. Models are tiny with random weights (every parameter drawn, norms too, so
a wrong name, a missed transpose or a swapped half shows in the logits)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer  # a dev dependency: the other side of the map

from conftest import cli_in_process
from gptlab.config import ModelConfig, build_config
from gptlab.errors import GptlabError
from gptlab.interop.export import export_run
from gptlab.interop.hf_gpt2 import to_gpt2_state_dict
from gptlab.interop.hf_tokenizer import to_hf_tokenizer, tokenizer_config
from gptlab.model import build_model
from gptlab.runs import CONFIG, TOKENIZER, WEIGHTS, load_run, publish_checkpoint, write_weights
from gptlab.tokenizers import BPETokenizer, CharTokenizer

ENGLISH = "ROMEO:\nBut, soft! what light through yonder window breaks?  It's 42."
CHINESE = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"
SHAPE = ["n_layer=2", "n_head=2", "n_embd=32", "block_size=32"]
VARIANTS = {  # name: (overrides, the transformers class that must express it)
    "classic": ([], "GPT2LMHeadModel"),
    "gelu-tanh-untied": (["mlp=gelu_tanh", "tie_embeddings=false"], "GPT2LMHeadModel"),
    "rope-swiglu-untied": (
        ["position=rope", "rope_base=500", "norm=rmsnorm", "mlp=swiglu", "bias=false", "tie_embeddings=false"],
        "LlamaForCausalLM",
    ),
    "rope-relu2-bias": (["position=rope", "norm=rmsnorm", "mlp=relu2", "bias=true"], "LlamaForCausalLM"),
    "cpu-modern": (["preset=cpu-modern"], "Qwen3ForCausalLM"),
}


def test_classic_weights_map_to_gpt2_names_with_conv1d_transposes():
    model = build_model(ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16))
    theirs, ours = to_gpt2_state_dict(model), model.state_dict()
    assert len(theirs) == len(ours) - 1  # everything but the tied lm_head
    assert torch.equal(theirs["transformer.h.1.attn.c_attn.weight"], ours["blocks.1.attn.qkv.weight"].t())
    assert torch.equal(theirs["transformer.h.0.ln_2.bias"], ours["blocks.0.ln_2.bias"])
    with pytest.raises(GptlabError, match="not GPT-2 shaped"):
        to_gpt2_state_dict(
            build_model(
                ModelConfig(
                    vocab_size=11,
                    block_size=8,
                    n_layer=1,
                    n_head=2,
                    n_embd=16,
                    position="rope",
                    norm="rmsnorm",
                    mlp="swiglu",
                )
            )
        )


@pytest.fixture(scope="session")
def bpe(shakespeare_txt: Path, tang_jsonl: Path) -> BPETokenizer:
    poems = "\n".join(
        json.loads(line)["paragraphs"][0] for line in tang_jsonl.read_text(encoding="utf-8").splitlines()[:400]
    )
    return BPETokenizer.train([shakespeare_txt.read_text(encoding="utf-8")[:200_000], poems], vocab_size=500)


def randomize(model: torch.nn.Module) -> None:
    """Draw every weight (a zero-initialised projection or a unit norm would hide a wrong map)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)


def make_run(root: Path, overrides: list[str], tokenizer) -> tuple[Path, torch.nn.Module]:
    """A run directory holding a randomly initialised model (no training needed to test maps)."""
    preset = next((o.split("=")[1] for o in overrides if o.startswith("preset=")), "cpu-tiny")
    rest = [o for o in overrides if not o.startswith("preset=")]
    cfg = build_config(preset, None, SHAPE + [f"vocab_size={tokenizer.vocab_size}"] + rest)
    model = build_model(cfg.model).eval()
    randomize(model)
    root.mkdir(parents=True)
    tokenizer.save(root / TOKENIZER)
    (root / CONFIG).write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    publish_checkpoint(root, 0, lambda d: (write_weights(model, d / WEIGHTS, 0), [WEIGHTS])[1])
    return root, model


def max_diff(hf_model, ours, ids: list[list[int]]) -> float:
    x = torch.tensor(ids)
    with torch.no_grad():
        return (hf_model(x).logits - ours(x)[0]).abs().max().item()


def batch(tokenizer, n: int = 24) -> list[list[int]]:
    return [tokenizer.encode(ENGLISH)[:n], tokenizer.encode(CHINESE + ENGLISH)[:n]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_loads_in_transformers_with_the_same_logits_and_ids(variant, bpe, tmp_path):
    overrides, cls = VARIANTS[variant]
    run, model = make_run(tmp_path / "run", overrides, bpe)
    out = export_run(run, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == cls
    assert max_diff(hf, model, batch(bpe)) < 1e-4
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    for text in (ENGLISH, CHINESE, "<|endoftext|> is text here"):
        assert tok(text).input_ids == bpe.encode(text)
        assert tok.decode(bpe.encode(text)) == text
    assert tok.eos_token_id == bpe.eot_id == json.loads((out / "generation_config.json").read_text())["eos_token_id"]


def test_char_and_bpe_tokenizer_json_give_the_same_ids_in_the_tokenizers_library(bpe, shakespeare_txt, tmp_path):
    from tokenizers import Tokenizer

    text = shakespeare_txt.read_text(encoding="utf-8")[-3000:] + CHINESE
    char = CharTokenizer(text + CHINESE + ENGLISH)
    for name, ours in (("char", char), ("bpe", bpe)):
        (tmp_path / name).mkdir()
        to_hf_tokenizer(ours).save(str(tmp_path / name / "tokenizer.json"))
        (tmp_path / name / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(ours, 32)))
        theirs = Tokenizer.from_file(str(tmp_path / name / "tokenizer.json"))
        auto = AutoTokenizer.from_pretrained(tmp_path / name, local_files_only=True)
        for sample in (text, CHINESE, ENGLISH):
            ids = theirs.encode(sample, add_special_tokens=False).ids
            assert ids == ours.encode(sample) == auto(sample).input_ids, name
            assert theirs.decode(ids) == sample == auto.decode(ids)
    # A char vocabulary has no end-of-text token: the newline its documents are separated by ends a text.
    assert AutoTokenizer.from_pretrained(tmp_path / "char", local_files_only=True).eos_token_id == char.encode("\n")[0]


def test_export_of_a_trained_run_through_the_cli(tiny_run, tmp_path, capsys):
    out = tmp_path / "exported"
    proc = cli_in_process(capsys, "export", tiny_run, "--format", "hf", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    }
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "val loss at step 30" in card and "tinyshakespeare" in card
    loaded = load_run(tiny_run)
    text = "ROMEO:\nBut, soft! what light through yonder window breaks?"  # characters of its corpus
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert max_diff(hf, loaded.model, [loaded.tokenizer.encode(text)[:32]]) < 1e-4
    assert AutoTokenizer.from_pretrained(out, local_files_only=True)(text).input_ids == loaded.tokenizer.encode(text)


@pytest.mark.parametrize(
    "overrides, why",
    [
        (["logit_softcap=15"], "logit_softcap=15.0"),
        (["value_embeds=true"], "value_embeds=true (gpt-2, llama and qwen3 have no value embeddings)"),
        (["resid_mix=true"], "resid_mix=true"),
        (["smear=true"], "smear=true"),
        (["position=rope", "norm=rmsnorm", "mlp=gelu"], "mlp='gelu' with rope"),
        (["position=rope", "norm=layernorm", "mlp=swiglu"], "norm='layernorm' with rope"),
    ],
)
def test_export_refuses_what_no_architecture_expresses(overrides, why, bpe, tmp_path, capsys):
    run, _ = make_run(tmp_path / "run", overrides, bpe)
    proc = cli_in_process(capsys, "export", run, "--out", tmp_path / "hf")
    assert proc.returncode == 1 and why.lower() in proc.stderr.lower() and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "hf").exists() and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_export_never_writes_over_an_existing_directory(tiny_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    proc = cli_in_process(capsys, "export", tiny_run, "--out", taken)
    assert proc.returncode == 1 and "non-empty directory" in proc.stderr
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def hf_checkpoint(kind: str, bpe, where: Path) -> tuple[Path, torch.nn.Module]:
    """A randomly initialised transformers model of `kind` with a tokenizer, saved as a hub-style directory."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    v = bpe.vocab_size
    if kind == "gpt2":  # transformers' defaults: GPT-2's tanh GELU written out (gelu_new), tied head
        model = GPT2LMHeadModel(GPT2Config(vocab_size=v, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    elif kind == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=v,
                hidden_size=32,
                intermediate_size=88,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=32,
            )
        )
    else:
        model = Qwen3ForCausalLM(
            Qwen3Config(
                vocab_size=v,
                hidden_size=32,
                intermediate_size=88,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=16,
                max_position_embeddings=32,
                tie_word_embeddings=True,
            )
        )
    randomize(model)
    model.eval().save_pretrained(where)
    to_hf_tokenizer(bpe).save(str(where / "tokenizer.json"))
    (where / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(bpe, 32)), encoding="utf-8")
    return where, model


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen3"])
def test_import_then_export_keeps_the_logits(kind, bpe, tmp_path, capsys):
    src, theirs = hf_checkpoint(kind, bpe, tmp_path / "src")
    proc = cli_in_process(capsys, "import", src, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    run = load_run(tmp_path / "run")
    assert run.tokenizer.encode(CHINESE + ENGLISH) == bpe.encode(CHINESE + ENGLISH)
    assert run.tokenizer.eot_id == bpe.eot_id
    # prepare's worker processes get it pickled: "<|endoftext|>" in a text must stay text there too.
    text = "a<|endoftext|>b"
    assert pickle.loads(pickle.dumps(run.tokenizer)).encode(text) == run.tokenizer.encode(text) == bpe.encode(text)
    # gelu_new (GPT-2's hand-written tanh GELU) and torch's tanh GELU agree to rounding.
    assert max_diff(theirs, run.model, batch(bpe)) < 1e-4
    again = AutoModelForCausalLM.from_pretrained(
        export_run(tmp_path / "run", tmp_path / "back"), local_files_only=True
    ).eval()
    assert type(again) is type(theirs)
    assert max_diff(again, run.model, batch(bpe)) < 1e-4


def test_imported_checkpoint_samples_evaluates_and_continues_pretraining(bpe, tmp_path, capsys, shakespeare_txt):
    from gptlab.data.prepare import prepare

    src, theirs = hf_checkpoint("gpt2", bpe, tmp_path / "src")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_txt.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    data = tmp_path / "data"
    prepare([str(corpus)], data, str(src), workers=1, progress=False)  # the checkpoint's own tokenizer
    run = tmp_path / "run"
    proc = cli_in_process(
        capsys,
        "import",
        src,
        "batch_size=2",
        "max_steps=3",
        "eval_interval=3",
        "eval_batches=1",
        "sample_tokens=4",
        "warmup_steps=0",
        "device=cpu",
        "--out",
        run,
        "--data",
        data,
    )
    assert proc.returncode == 0, proc.stderr
    before = load_run(run).model.state_dict()["blocks.0.attn.qkv.weight"].clone()
    proc = cli_in_process(capsys, "sample", run, "--prompt", "ROMEO:", "--max-new-tokens", "5", "--temperature", "0")
    assert proc.returncode == 0 and proc.stdout.startswith("ROMEO:"), proc.stderr
    greedy = theirs.generate(torch.tensor([bpe.encode("ROMEO:")]), max_new_tokens=5, do_sample=False)
    assert proc.stdout.rstrip("\n") == bpe.decode(greedy[0].tolist())  # the same greedy text as transformers
    proc = cli_in_process(capsys, "eval", run, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["tokens"] > 0, proc.stderr
    proc = cli_in_process(capsys, "train", "--resume", run)
    assert proc.returncode == 0, proc.stderr
    after = load_run(run)
    assert after.step == 3 and not torch.equal(after.model.state_dict()["blocks.0.attn.qkv.weight"], before)


def test_import_refuses_what_gptlab_cannot_express(bpe, tmp_path, capsys):
    src, _ = hf_checkpoint("llama", bpe, tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"num_key_value_heads": 1}))
    proc = cli_in_process(capsys, "import", src, "--out", tmp_path / "run")
    assert proc.returncode == 1 and "num_key_value_heads=1" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    proc = cli_in_process(capsys, "import", tmp_path, "--out", tmp_path / "run")
    assert proc.returncode == 1 and "no config.json" in proc.stderr
    for broken, why in ((["a list"], "not a JSON object"), ({"model_type": "llama"}, "has no hidden_size")):
        (src / "config.json").write_text(json.dumps(broken))
        proc = cli_in_process(capsys, "import", src, "--out", tmp_path / "run")
        assert proc.returncode == 1 and why in proc.stderr and len(proc.stderr.splitlines()) == 1
