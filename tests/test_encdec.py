"""The encoder–decoder (arch=encdec): its attention paths, pair data with the loss on the target,
cached sampling, exact resume, the couplet converter on real poems, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, cli_in_process, interrupted_at, serving
from gptlab.config import ModelConfig, build_config
from gptlab.data.couplets import write_couplets
from gptlab.data.loader import Dataset
from gptlab.data.pair_loader import PairLoader
from gptlab.data.pairs import prepare_pairs, read_pairs
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.seq2seq import generate_targets
from gptlab.model import build_model
from gptlab.model.accounting import count_params
from gptlab.model.loss import IGNORE
from test_page_browser import browser  # noqa: F401 (the headless chromium fixture)

TINY = dict(arch="encdec", vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="session")
def couplets(tmp_path_factory: pytest.TempPathFactory, tang_jsonl: Path) -> Path:
    """Couplets of the first 400 real Tang poems as a pairs dataset (char tokenizer)."""
    root = tmp_path_factory.mktemp("couplets")
    poems = root / "poems.jsonl"
    poems.write_text("\n".join(tang_jsonl.read_text(encoding="utf-8").splitlines()[:400]), encoding="utf-8")
    write_couplets([str(poems)], root / "couplets.jsonl")
    prepare_pairs([str(root / "couplets.jsonl")], root / "ds", "char", val_fraction=0.1)
    return root / "ds"


@pytest.fixture(scope="session")
def encdec_run(tmp_path_factory: pytest.TempPathFactory, couplets: Path) -> Path:
    """A briefly trained encoder–decoder on the couplets (read only)."""
    from gptlab.train.trainer import train

    run = tmp_path_factory.mktemp("encdec") / "run"
    train(_cfg(couplets, 8), run)
    return run


def _cfg(data: Path, steps: int):
    cfg = build_config(
        "cpu-tiny",
        None,
        [
            "arch=encdec",
            "n_layer=1",
            "n_head=2",
            "n_embd=32",
            "block_size=16",
            "batch_size=8",
            "eval_batches=2",
            f"max_steps={steps}",
            "eval_interval=4",
            "checkpoint_interval=4",
            "log_interval=2",
            "sample_tokens=8",
            "warmup_steps=2",
            "dropout=0.1",
            "device=cpu",
        ],
    )
    cfg.data = str(data)
    return cfg


def _model(**extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, **extra})).eval()


def test_couplet_converter_reads_real_poems_in_jsonl_and_json(tmp_path, tang_jsonl):
    records = [json.loads(line) for line in tang_jsonl.read_text(encoding="utf-8").splitlines()[:50]]
    (tmp_path / "poems.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8"
    )
    (tmp_path / "poems.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    result = write_couplets([str(tmp_path / "poems.jsonl")], tmp_path / "a.jsonl")
    write_couplets([str(tmp_path / "poems.json")], tmp_path / "b.jsonl")
    pairs = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # The first poem's first paragraph is "秦川雄帝宅，函谷壯皇居。": one couplet, first line -> second.
    assert pairs[0] == {"source": "秦川雄帝宅", "target": "函谷壯皇居"}
    assert result.pairs == len(pairs) > 150 and result.poems <= 50
    assert all(len(p["source"]) == len(p["target"]) and "，" not in p["source"] + p["target"] for p in pairs)


def test_decoder_is_causal_and_sees_the_source_only_through_cross_attention():
    model = _model()
    source = torch.randint(0, 40, (2, 7))
    target = torch.randint(0, 40, (2, 9))
    logits, _ = model(target, source=source)
    other_source = source.clone()
    other_source[:, 3] = (other_source[:, 3] + 1) % 40
    assert not torch.allclose(model(target, source=other_source)[0], logits)  # the source matters
    future = target.clone()
    future[:, 5:] = (future[:, 5:] + 7) % 40
    changed = model(future, source=source)[0]
    assert torch.equal(changed[:, :5], logits[:, :5]) and not torch.allclose(changed[:, 5:], logits[:, 5:])
    with torch.no_grad():
        for block in model.decoder:  # cut every cross-attention's output: the source can no longer reach
            block.cross.proj.weight.zero_()
            block.cross.proj.bias.zero_()
    assert torch.equal(model(target, source=source)[0], model(target, source=other_source)[0])


def test_source_padding_is_masked():
    model = _model(position="rope", qk_norm=True)
    source, target = torch.randint(0, 40, (1, 5)), torch.randint(0, 40, (1, 6))
    padded = torch.cat([source, torch.randint(0, 40, (1, 4))], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 4])
    alone = model(target, source=source)[0]
    assert torch.allclose(model(target, source=padded, source_mask=mask)[0], alone, atol=1e-5)
    assert not torch.allclose(model(target, source=padded)[0], alone, atol=1e-3)  # unmasked pads do change it


@pytest.mark.parametrize("arch", ["encdec", "gpt"])
def test_pair_batches_count_only_target_tokens_and_its_end(couplets, arch):
    dataset = Dataset(couplets)
    sep = dataset.meta["separator"]
    loader = PairLoader(dataset, "train", 6, 16, seed=3, arch=arch)
    # The loader draws pair indices uniformly from its seeded generator: the same draw says which pairs.
    picks = np.random.Generator(np.random.PCG64(3)).integers(0, len(loader.pairs), size=6)
    batch = loader.next_batch()
    pairs = read_pairs(couplets, dataset.meta, "train")
    for b, i in enumerate(picks):
        source, target = (list(map(int, a)) for a in pairs.pair(int(i)))
        counted = batch.loss_targets()[b][batch.loss_targets()[b] != IGNORE].tolist()
        assert counted == target + [sep]
        if arch == "encdec":
            assert batch.source[b][batch.source_mask[b]].tolist() == source
            assert batch.inputs[b, : len(target) + 1].tolist() == [sep] + target
        else:
            assert batch.source is None
            assert batch.inputs[b, : len(source) + 1].tolist() == source + [sep]


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, 0, 1.0), (1.0, 5, 0.9)])
def test_cached_sampling_equals_uncached(temperature, top_k, top_p):
    model = _model(position="rope", tie_embeddings=False)  # an untied head need not echo the separator
    params = SamplingParams(12, temperature, top_k, top_p, repetition_penalty=1.3, seed=5)
    cached = generate_targets(model, 0, [3, 4, 5, 6], params, num_samples=3, use_cache=True)
    plain = generate_targets(model, 0, [3, 4, 5, 6], params, num_samples=3, use_cache=False)
    assert cached == plain and any(cached)


def test_parameters_are_counted_from_the_model():
    cfg = ModelConfig(**TINY)
    model = build_model(cfg)
    counted = count_params(cfg)
    assert counted.total == sum(p.numel() for p in model.parameters())
    assert counted.by_place["encoder blocks"] < counted.by_place["decoder blocks"]  # + cross-attention


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, couplets, encdec_run, monkeypatch):
    from safetensors.torch import load_file

    from gptlab.runs import weights_path
    from gptlab.train.trainer import train

    run = tmp_path / "resumed"
    with interrupted_at(monkeypatch, 2):
        assert train(_cfg(couplets, 8), run).interrupted
    train(None, run, resume=True)

    def losses(r):
        return {
            (x["step"], k): x[k]
            for x in map(json.loads, (r / "metrics.jsonl").read_text().splitlines())
            for k in ("train_loss", "val_loss")
            if k in x
        }

    straight, resumed = losses(encdec_run), losses(run)
    assert resumed == straight and ("train_loss", 8) in {(k, s) for s, k in resumed}
    a, b = load_file(weights_path(run)), load_file(weights_path(encdec_run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sample_eval_and_report_of_an_encdec_run(capsys, encdec_run):
    out = cli_in_process(
        capsys, "sample", encdec_run, "--source", "秦川雄帝宅", "--temperature", "0", "--num-samples", "2"
    )
    assert out.returncode == 0 and out.stdout.count("秦川雄帝宅 -> ") == 2
    out = cli_in_process(capsys, "eval", encdec_run, "--json")
    result = json.loads(out.stdout)
    assert (
        result["tokens"]
        == Dataset(Path(json.loads((encdec_run / "config.json").read_text())["data"])).splits["val"]["tokens"]
    )
    assert cli_in_process(capsys, "report", encdec_run).returncode == 0


def test_bad_inputs_give_one_line_errors(capsys, tmp_path, encdec_run, tiny_run, char_dataset):
    assert_clean_error(cli_in_process(capsys, "sample", tiny_run, "--source", "ROMEO"), "--source", "encdec")
    assert_clean_error(cli_in_process(capsys, "sample", encdec_run, "--prompt", "x"), "--source")
    assert_clean_error(
        cli_in_process(capsys, "train", "--data", char_dataset, "--out", tmp_path / "r", "arch=encdec"), "--pairs"
    )
    assert not (tmp_path / "r").exists()
    assert_clean_error(
        cli_in_process(capsys, "train", "--data", char_dataset, "--out", tmp_path / "r", "arch=t5"), "arch"
    )
    (tmp_path / "text.jsonl").write_text('{"text": "no pairs here"}\n', encoding="utf-8")
    assert_clean_error(
        cli_in_process(capsys, "prepare", tmp_path / "text.jsonl", "--pairs", "--out", tmp_path / "d"),
        "source",
        "target",
    )
    assert_clean_error(
        cli_in_process(capsys, "couplets", tmp_path / "text.jsonl", "--out", tmp_path / "c.jsonl"), "no couplets"
    )
    assert not (tmp_path / "c.jsonl").exists()
    assert_clean_error(cli_in_process(capsys, "sample", encdec_run, "--source", "ROMEO"), "vocabulary")
    assert_clean_error(cli_in_process(capsys, "eval", encdec_run, "--data", char_dataset), "pairs")
    assert_clean_error(cli_in_process(capsys, "bench", "train", "--preset", "cpu-tiny", "arch=encdec"), "encdec")


def test_finetune_and_align_refuse_an_encdec_run_before_writing(capsys, tmp_path, encdec_run):
    # Post-training trains a decoder-only model on one sequence per conversation; an encoder–decoder
    # base once ended in a TypeError after the new run's directory was already written.
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    for command in ("finetune", "align"):
        out = cli_in_process(capsys, command, "--from", encdec_run, "--data", data, "--out", tmp_path / command)
        assert_clean_error(out, "encdec", command)
        assert not (tmp_path / command).exists()


def test_page_api_shows_cross_attention_beside_self_attention(encdec_run, tiny_run):
    from fastapi.testclient import TestClient

    from gptlab.serve.app import create_app

    client = TestClient(create_app(encdec_run, "cpu"))
    data = client.post("/api/encdec/attention", json={"source": "秦川雄帝宅", "target": "函谷", "head": 1}).json()
    assert [t["piece"] for t in data["source_tokens"]] == list("秦川雄帝宅")
    assert [t["piece"] for t in data["target_tokens"]][1:] == list("函谷")  # after the start token
    cross, self_ = torch.tensor(data["cross"]), torch.tensor(data["self"])
    assert cross.shape == (3, 5) and self_.shape == (3, 3)  # target x source beside target x target
    assert torch.allclose(cross.sum(-1), torch.ones(3), atol=1e-3) and (cross > 0).all()
    assert torch.equal(self_.triu(1), torch.zeros(3, 3))  # causal: the future gets nothing
    assert client.get("/api/info").json()["arch"] == "encdec"
    assert client.post("/api/next", json={"text": "秦"}).status_code == 400
    assert client.post("/v1/completions", json={"prompt": "秦"}).status_code == 400
    gpt = TestClient(create_app(tiny_run, "cpu"))
    assert gpt.post("/api/encdec/attention", json={"source": "ROMEO"}).status_code == 400


def test_page_draws_cross_attention_beside_self_attention(encdec_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with serving(encdec_run) as url:
        browser.get(url)
        size = "const c = document.getElementById(arguments[0]); return [c.width, c.height];"
        WebDriverWait(browser, 30).until(lambda d: d.execute_script(size, "encdec-cross")[0] > 10)
        assert browser.find_element(By.ID, "view-encdec").is_displayed()
        assert not browser.find_element(By.ID, "prompt-panel").is_displayed()
        # Default source and target: 5 source characters; the start token and 5 target characters.
        self_w, self_h = browser.execute_script(size, "encdec-self")
        cross_w, cross_h = browser.execute_script(size, "encdec-cross")
        assert self_w == self_h and cross_h == self_h and cross_w < cross_h  # 6 x 6 beside 6 x 5
        inked = browser.execute_script("""
            const c = document.getElementById('encdec-cross');
            const d = c.getContext('2d').getImageData(34, 34, c.width - 34, c.height - 34).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 250) n++; return n;""")
        assert inked > 0  # the weights are drawn, not an empty frame
        assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None  # no error shown


def test_a_gpt_trains_on_the_same_pairs_and_is_measured_on_the_same_targets(tmp_path, couplets, capsys):
    from gptlab.train.trainer import train

    cfg = _cfg(couplets, 2)
    cfg.model.arch = "gpt"
    cfg.model.n_layer, cfg.model.block_size = 2, 32  # room for "source<sep>target<sep>" of the longest couplet
    train(cfg, tmp_path / "gpt")
    first_source = Dataset(couplets).tokenizer.decode(
        int(i) for i in read_pairs(couplets, Dataset(couplets).meta, "val").pair(0)[0]
    )
    assert f"{first_source} -> " in (tmp_path / "gpt" / "samples.txt").read_text(encoding="utf-8")
    result = json.loads(cli_in_process(capsys, "eval", tmp_path / "gpt", "--json").stdout)
    assert result["tokens"] == Dataset(couplets).splits["val"]["tokens"]  # every target and its end, as encdec
