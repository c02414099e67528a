"""`gptlab sample` (cache, stop strings, --show-probs) and `gptlab eval` as a user runs them."""

import json
import math
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from conftest import assert_clean_error, run_cli
from gptlab.cli import main
from gptlab.config import ModelConfig, build_config
from gptlab.data.prepare import prepare
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.probs import next_token_probs
from gptlab.inference.seq2seq import generate_targets
from gptlab.model import build_model
from gptlab.runs import load_run
from gptlab.serve.app import create_app
from gptlab.train.trainer import train

TINY = [
    "n_layer=2",
    "n_head=2",
    "n_embd=32",
    "block_size=32",
    "batch_size=8",
    "eval_batches=1",
    "sample_tokens=0",
    "warmup_steps=2",
    "lr=3e-3",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A tiny model gains nothing from threads; on a busy machine their hand-offs cost more than the math."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, shakespeare_txt):
    """The first 30,000 characters of tinyshakespeare: its val split is about 3,000 tokens."""
    root = tmp_path_factory.mktemp("small")
    (root / "text.txt").write_text(shakespeare_txt.read_text(encoding="utf-8")[:30000], encoding="utf-8")
    prepare([str(root / "text.txt")], root / "data", "char")
    return root / "data"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small_data):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = build_config(None, None, ["max_steps=20", *TINY])
    cfg.data = str(small_data)
    train(cfg, run)
    return run


def cli(capsys, *args) -> subprocess.CompletedProcess:
    """Run the command line in this process (a fresh interpreter costs seconds on a busy machine)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_greedy_with_and_without_cache_agree_past_block_size(capsys, run_dir):
    args = ["sample", run_dir, "--prompt", "First", "--temperature", "0", "--max-new-tokens", "90"]
    cached, full = cli(capsys, *args), cli(capsys, *args, "--no-cache")
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout == full.stdout and len(cached.stdout) == len("First") + 90 + 1  # 95 > block_size 32


def test_seeded_samples_batch_reproducibly(capsys, run_dir):
    args = ["sample", run_dir, "--prompt", "A", "--max-new-tokens", "40", "--seed", "7", "--num-samples", "3"]
    first, again = cli(capsys, *args), cli(capsys, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    samples = first.stdout.split("--- sample ")[1:]
    assert len(samples) == 3 and len(set(s.split("\n", 1)[1] for s in samples)) == 3
    # Sample 2 of a batch seeded 7 is the sample seed 8 gives alone.
    alone = cli(capsys, "sample", run_dir, "--prompt", "A", "--max-new-tokens", "40", "--seed", "8")
    assert samples[1].split("\n", 1)[1] == alone.stdout


def test_sample_gives_the_servers_tokens_for_the_same_seed(capsys, run_dir):
    args = ["sample", run_dir, "--prompt", "First", "--max-new-tokens", "60", "--seed", "7", "--num-samples", "3"]
    args += ["--temperature", "1"]
    printed = cli(capsys, *args).stdout
    samples = [s.split("\n", 1)[1][:-1] for s in printed.split("--- sample ")[1:]]
    body = {"prompt": "First", "max_tokens": 60, "seed": 7, "n": 3, "temperature": 1.0}
    with TestClient(create_app(run_dir, device="cpu")) as client:
        served = client.post("/v1/completions", json=body).json()["choices"]
    assert ["First" + c["text"] for c in served] == samples  # one character per token: the same tokens


def test_every_caller_chooses_its_tokens_through_the_one_core(capsys, run_dir, monkeypatch):
    from gptlab.inference import decoding

    calls = []
    real = decoding.step
    monkeypatch.setattr(decoding, "step", lambda states, logits: calls.append(len(states)) or real(states, logits))
    cli(capsys, "sample", run_dir, "--prompt", "A", "--max-new-tokens", "3", "--num-samples", "2")
    assert sum(calls) == 6, "gptlab sample"
    calls.clear()
    with TestClient(create_app(run_dir, device="cpu")) as client:
        assert client.post("/v1/completions", json={"prompt": "A", "max_tokens": 3, "n": 2}).status_code == 200
    assert sum(calls) == 6, "the model service"
    calls.clear()
    torch.manual_seed(0)
    encdec = build_model(ModelConfig(arch="encdec", vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16))
    generate_targets(encdec, 0, [3, 4, 5], SamplingParams(3, seed=1), num_samples=2)
    assert calls, "the encoder-decoder"


def test_stop_string_ends_the_sample(capsys, run_dir):
    plain = cli(capsys, "sample", run_dir, "--prompt", "A", "--temperature", "0", "--max-new-tokens", "40").stdout
    stop = plain[3:5]
    cut = cli(
        capsys, "sample", run_dir, "--prompt", "A", "--temperature", "0", "--max-new-tokens", "40", "--stop", stop
    ).stdout
    assert cut == plain[: plain.index(stop)] + "\n"


def test_show_probs_json_matches_the_shared_distribution(run_dir):
    # The real command, in its own process.
    proc = run_cli(
        "sample",
        run_dir,
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--show-probs",
        "4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    steps, final = lines[:-1], lines[-1]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
    for s in steps:
        probs = [c["prob"] for c in s["candidates"]]
        assert len(probs) == 4 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
        assert s["token"] == s["candidates"][0]  # greedy takes the top candidate
    assert final["text"] == "".join(s["token"]["piece"] for s in steps)
    # The page computes with next_token_probs: the same numbers for the same prompt (to float
    # rounding here, as this process runs one thread and the command two; in one process they are
    # bit for bit equal, see test_engine).
    loaded = load_run(run_dir)
    probs = next_token_probs(loaded.model, loaded.tokenizer.encode("ROMEO:"))
    top = torch.topk(probs, 4)
    assert [c["id"] for c in steps[0]["candidates"]] == top.indices.tolist()
    assert [c["prob"] for c in steps[0]["candidates"]] == pytest.approx(top.values.tolist(), rel=1e-5)
    # Later steps: the distribution after the prompt and the tokens chosen so far.
    ids = loaded.tokenizer.encode("ROMEO:" + final["text"][:3])
    later = next_token_probs(loaded.model, ids)
    assert steps[3]["candidates"][0]["prob"] == pytest.approx(float(later.max()), abs=1e-5)


def test_show_probs_text_lists_candidates(capsys, run_dir):
    proc = cli(capsys, "sample", run_dir, "--prompt", "A", "--max-new-tokens", "3", "--seed", "1", "--show-probs", "2")
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["step 1", "step 2", "step 3"]
    assert all(line.count("%") == 3 for line in lines[:3])  # the chosen token and 2 candidates


def test_eval_covers_the_whole_split(capsys, run_dir, small_data):
    proc = cli(capsys, "eval", run_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    meta = json.loads((small_data / "meta.json").read_text())["splits"]["val"]
    assert result["split"] == "val" and result["tokens"] == meta["tokens"] - 1
    # The same figure computed the plain way: every token predicted from the ones before it in its window.
    model = load_run(run_dir).model
    ids = np.fromfile(small_data / "val.bin", dtype=np.uint16).astype(np.int64)
    nats = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 32):
            x, y = torch.from_numpy(ids[start : start + 33][:-1]), torch.from_numpy(ids[start + 1 : start + 33])
            logits, _ = model(x[None])
            nats += F.cross_entropy(logits[0], y, reduction="sum").item()
    assert result["loss"] == pytest.approx(nats / (len(ids) - 1), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2) * meta["tokens"] / meta["bytes"])
    assert result["loss"] < math.log(65)  # it learnt something in 20 steps
    text = cli(capsys, "eval", run_dir, "--batch-size", "4")
    assert text.returncode == 0 and text.stdout.startswith("val: ") and "perplexity" in text.stdout
    assert text.stderr.count("eval: ") >= 5  # progress while it runs


def test_eval_refuses_a_dataset_with_another_tokenizer(capsys, tmp_path, run_dir):
    (tmp_path / "t.txt").write_text("only these letters: abc " * 50)
    prepare([str(tmp_path / "t.txt")], tmp_path / "d", "char")
    assert_clean_error(cli(capsys, "eval", run_dir, "--data", tmp_path / "d"), "another tokenizer")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["eval", "{run}", "--split", "test"], ["no split 'test'"]),
        (["eval", "{tmp}"], ["not a gptlab run"]),
        (["sample", "{run}", "--top-p", "0"], ["top_p"]),
        (["sample", "{run}", "--repetition-penalty", "-1"], ["repetition_penalty"]),
        (["sample", "{run}", "--json"], ["--show-probs"]),
        (["sample", "{run}", "--stop", ""], ["stop strings"]),
    ],
)
def test_bad_inference_input_is_one_clear_line(capsys, tmp_path, run_dir, args, needles):
    assert_clean_error(cli(capsys, *[a.format(run=run_dir, tmp=tmp_path) for a in args]), *needles)
