"""A model's history: the weights kept at steps 0, 50, 100, 200, ... and the last, written as the run trains,
the same after a resume, off with history=false, on by default below 20 M parameters; `gptlab info --run`
gives their exact size, `gptlab sample --step N` samples them, and the page's history API shows them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import assert_clean_error, cli_in_process
from gptlab.config import ModelConfig, RunConfig, build_config
from gptlab.errors import GptlabError
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.inference.probs import next_token_probs
from gptlab.model import build_model
from gptlab.model.accounting import count_params
from gptlab.model.introspect import attention_maps
from gptlab.runs import (
    CHECKPOINTS,
    LATEST,
    WEIGHTS,
    history_bytes,
    history_file,
    history_steps,
    load_kept_model,
    load_run,
    read_config,
    save_weights,
)
from gptlab.serve.app import create_app
from gptlab.train.history import AUTO_MAX_PARAMS, history_enabled, is_kept, kept_steps
from gptlab.train.trainer import train

TINY = [
    "n_layer=1",
    "n_head=2",
    "n_embd=16",
    "block_size=16",
    "batch_size=4",
    "eval_interval=1000",
    "eval_batches=1",
    "log_interval=50",
    "sample_tokens=0",
    "warmup_steps=5",
    "device=cpu",
]
PROMPT = "ROMEO:\nWhat"


def train_tiny(data, out, *overrides: str):
    cfg = build_config("cpu-tiny", None, TINY + list(overrides))
    cfg.data = str(data)
    train(cfg, out)
    return out


@pytest.fixture(scope="module")
def run(char_dataset, tmp_path_factory):
    """120 steps with the default history (auto: this model is tiny): steps 0, 50, 100 and 120 kept."""
    return train_tiny(char_dataset, tmp_path_factory.mktemp("history") / "run", "max_steps=120")


@pytest.fixture(scope="module")
def client(run):
    with TestClient(create_app(run, "cpu")) as c:
        yield c


def test_the_series_doubles_from_50_and_ends_at_the_last_step():
    assert kept_steps(1000) == [0, 50, 100, 200, 400, 800, 1000]
    assert kept_steps(800) == [0, 50, 100, 200, 400, 800]
    assert kept_steps(30) == [0, 30]
    assert [s for s in range(3301) if is_kept(s, 3300)] == [0, 50, 100, 200, 400, 800, 1600, 3200, 3300]


def test_training_keeps_the_series_as_it_goes(run):
    assert history_steps(run) == [0, 50, 100, 120]
    cfg = read_config(run)
    # Step 0 is the initialisation the seed gives, before any update.
    torch.manual_seed(cfg.train.seed)
    initial = build_model(cfg.model)
    for name, tensor in load_kept_model(run, cfg, 0).state_dict().items():
        assert torch.equal(tensor, initial.state_dict()[name]), name
    # The last is the run's own final weights; the ones between differ from both ends.
    final = load_run(run).model.state_dict()
    for name, tensor in load_kept_model(run, cfg, 120).state_dict().items():
        assert torch.equal(tensor, final[name]), name
    heads = [load_kept_model(run, cfg, s).wte.weight for s in (0, 50, 100, 120)]
    assert not any(torch.equal(a, b) for i, a in enumerate(heads) for b in heads[i + 1 :])


def test_a_resumed_run_keeps_the_same_series(run, char_dataset, tmp_path):
    # The same run, checkpointed at 50 and 100; then it "crashes" after step 100's history was kept but before
    # the rest: its checkpoints after 50 and the last history file are lost, and it resumes from step 50.
    settings = ["max_steps=120", "checkpoint_interval=50", "keep_checkpoints=3"]
    again = train_tiny(char_dataset, tmp_path / "again", *settings)
    for step in (100, 120):
        shutil.rmtree(again / CHECKPOINTS / f"step-{step:07d}")
    (again / CHECKPOINTS / LATEST).write_text('{"checkpoint": "step-0000050", "step": 50}\n')
    history_file(again, 120).unlink()
    train(None, again, resume=True)
    assert history_steps(again) == history_steps(run)
    cfg = read_config(run)
    for step in history_steps(run):
        want = load_kept_model(run, cfg, step).state_dict()
        for name, tensor in load_kept_model(again, cfg, step).state_dict().items():
            assert torch.equal(tensor, want[name]), (step, name)  # to the last bit: the trajectory is the same


def test_history_false_keeps_none(char_dataset, tmp_path, capsys):
    off = train_tiny(char_dataset, tmp_path / "off", "max_steps=4", "history=false")
    assert not (off / "history").exists() and history_steps(off) == []
    assert_clean_error(cli_in_process(capsys, "sample", off, "--step", "0"), "step=0", "kept steps: none")
    with TestClient(create_app(off, "cpu")) as c:
        assert c.get("/api/history").json() == {"steps": [], "final": 4}
        refused = c.post("/api/next", json={"text": PROMPT, "step": 0})
        assert refused.status_code == 400 and refused.json()["detail"].startswith("step=0")


def test_the_setting_reads_true_false_and_auto():
    assert build_config("cpu-tiny", None, ["history=true"]).train.history is True
    assert build_config("cpu-tiny", None, ["history=false"]).train.history is False
    assert build_config("cpu-tiny", None, ["history=auto"]).train.history is None
    assert build_config("cpu-tiny", None, []).train.history is None
    with pytest.raises(GptlabError, match="history='maybe' is not a boolean"):
        build_config("cpu-tiny", None, ["history=maybe"])


def test_auto_keeps_a_history_below_20m_parameters_only():
    def cfg(n_layer: int, history: bool | None = None) -> RunConfig:
        c = RunConfig(model=ModelConfig(vocab_size=65, n_layer=n_layer, n_head=8, n_embd=512))
        c.train.history = history
        return c

    small, large = cfg(6), cfg(7)
    assert count_params(small.model).total < AUTO_MAX_PARAMS < count_params(large.model).total
    assert history_enabled(small) and not history_enabled(large)
    assert history_enabled(cfg(7, True)) and not history_enabled(cfg(6, False))
    assert not history_enabled(build_config("gpt2-small", None, ["vocab_size=50257"]))
    assert history_enabled(build_config("cpu-modern", None, ["vocab_size=65"]))


def test_info_prints_the_kept_steps_and_their_exact_disk_cost(run, capsys):
    done = cli_in_process(capsys, "info", "--run", run)
    assert done.returncode in (0, None), done.stderr
    size = sum(f.stat().st_size for f in (run / "history").iterdir())
    assert history_bytes(run) == size
    assert "0, 50, 100, 120" in done.stdout
    assert f"{size:,} bytes" in done.stdout


def test_sample_step_samples_the_kept_weights(run, tmp_path, capsys):
    # A run whose own weights are step 0's (the seed's initialisation) samples what --step 0 samples.
    cfg = read_config(run)
    torch.manual_seed(cfg.train.seed)
    initial = tmp_path / "initial"
    initial.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(run / name, initial / name)
    save_weights(build_model(cfg.model), initial / WEIGHTS, 0)
    args = ["--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1", "--device", "cpu"]
    at_zero = cli_in_process(capsys, "sample", run, "--step", "0", *args)
    assert at_zero.returncode in (0, None), at_zero.stderr
    assert at_zero.stdout == cli_in_process(capsys, "sample", initial, *args).stdout
    assert at_zero.stdout != cli_in_process(capsys, "sample", run, *args).stdout
    assert cli_in_process(capsys, "sample", run, "--step", "120", *args).stdout == (
        cli_in_process(capsys, "sample", run, *args).stdout
    )


def test_sample_refuses_a_step_not_kept(run, capsys):
    assert_clean_error(cli_in_process(capsys, "sample", run, "--step", "37"), "step=37", "0, 50, 100, 120")


def test_api_lists_the_kept_steps(client):
    assert client.get("/api/history").json() == {"steps": [0, 50, 100, 120], "final": 120}


def test_api_next_at_a_step_gives_that_steps_bars(client, run):
    cfg, ids = read_config(run), load_run(run).tokenizer.encode(PROMPT)
    bars = {}
    for step in (None, 0, 50, 120):
        got = client.post("/api/next", json={"text": PROMPT, "k": 5, "step": step}).json()
        assert got["step"] == step
        bars[step] = [(c["id"], c["prob"]) for c in got["candidates"]]
    assert bars[0] != bars[None] and bars[50] != bars[0]
    # The last kept step is the run's own weights.
    assert [i for i, _ in bars[120]] == [i for i, _ in bars[None]]
    assert [p for _, p in bars[120]] == pytest.approx([p for _, p in bars[None]], abs=1e-7)
    expected = next_token_probs(load_kept_model(run, cfg, 0), ids)
    assert [p for _, p in bars[0]] == pytest.approx(expected.sort(descending=True).values[:5].tolist(), abs=1e-7)


def test_api_attention_at_a_step_gives_that_steps_maps(client, run):
    cfg, ids = read_config(run), load_run(run).tokenizer.encode(PROMPT)
    at_zero = client.post("/api/attention", json={"text": PROMPT, "step": 0}).json()
    own = client.post("/api/attention", json={"text": PROMPT}).json()
    assert at_zero["step"] == 0 and at_zero["weights"] != own["weights"]
    expected = attention_maps(load_kept_model(run, cfg, 0), ids)[0, 0]
    assert torch.tensor(at_zero["weights"]) == pytest.approx(expected, abs=1e-5)


def test_api_continues_greedily_with_the_kept_weights(client, run):
    loaded = load_run(run)
    ids = loaded.tokenizer.encode(PROMPT)
    got = client.post("/api/history/continue", json={"text": PROMPT, "step": 0, "max_new_tokens": 12}).json()
    steps = generate_steps(load_kept_model(run, loaded.config, 0), loaded.tokenizer, [ids], SamplingParams(12, 0.0))
    expected = "".join(e.text for events in steps for e in events)
    assert got == {"step": 0, "text": PROMPT + expected, "continuation": expected}
    other = client.post("/api/history/continue", json={"text": PROMPT, "step": 120, "max_new_tokens": 12}).json()
    assert other["continuation"] != expected


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/api/next", {"text": PROMPT, "step": 37}, 400, "step=37 is not kept"),
        ("/api/next", {"text": PROMPT, "step": -1}, 400, "kept steps: 0, 50, 100, 120"),
        ("/api/next", {"text": PROMPT, "step": "x"}, 422, "step"),
        ("/api/attention", {"text": PROMPT, "step": 51}, 400, "step=51"),
        ("/api/history/continue", {"text": PROMPT, "step": 37}, 400, "step=37"),
        ("/api/history/continue", {"text": PROMPT}, 422, "step"),
        ("/api/history/continue", {"text": PROMPT, "step": 0, "max_new_tokens": 201}, 422, "max_new_tokens"),
        ("/api/history/continue", {"text": "", "step": 0}, 400, "empty"),
    ],
)
def test_api_refuses_bad_steps_by_name(client, path, body, status, needle):
    got = client.post(path, json=body)
    assert got.status_code == status, got.text
    assert needle in str(got.json()["detail"])


def test_both_demos_keep_a_history_and_say_how_to_open_the_page():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text(encoding="utf-8")
    settings = dict(re.findall(r"^(DEMO_\w*PRESET) \?= (\S+)$", makefile, re.M))
    # The Chinese demo's character vocabulary is the larger (about 7,000 characters of Tang poems): allow 3x.
    for name, vocab in (("DEMO_PRESET", 65), ("DEMO_ZH_PRESET", 20_000)):
        assert history_enabled(build_config(settings[name], None, [f"vocab_size={vocab}"])), name
    for run in ("$(DEMO_RUN)", "$(DEMO_ZH_RUN)"):
        assert f"gptlab serve {run}" in makefile and "http://127.0.0.1:8000/" in makefile


def test_info_run_refuses_what_goes_with_a_preset(run, tmp_path, capsys):
    assert_clean_error(cli_in_process(capsys, "info", "--run", run, "n_layer=3"), "--run", "--preset")
    assert_clean_error(cli_in_process(capsys, "info", "--run", tmp_path), "is not a gptlab run")


def test_a_history_that_cannot_be_written_stops_in_one_line(run, tmp_path):
    from gptlab.runs import save_kept_weights

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "history").write_text("a file where the directory should be")
    with pytest.raises(GptlabError, match="could not keep the weights of step 50"):
        save_kept_weights(load_run(run).model, blocked, 50)


def test_the_service_holds_the_last_two_kept_models_only(client):
    from gptlab.serve.service import KEPT_MODELS

    for step in (0, 50, 100, 0):
        assert client.post("/api/next", json={"text": PROMPT, "k": 1, "step": step}).status_code == 200
    # Memory stays bounded however far the slider travels; the most recently used are the ones kept.
    assert KEPT_MODELS == 2 and list(client.app.state.service._kept) == [100, 0]
