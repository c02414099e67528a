"""One training step shown number by number (train/lesson.py, `gptlab step`, /api/train-step): the step is the
trainer's own to the last bit, repeated steps memorise a window, reset goes back, the run is never written."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import assert_clean_error, cli_in_process
from gptlab.config import build_config
from gptlab.data.loader import Dataset, batch_loader
from gptlab.model import build_model
from gptlab.runs import load_weights, read_config, weights_path
from gptlab.serve.app import create_app
from gptlab.train.checkpoint import read_state
from gptlab.train.lesson import Lesson, layer_of
from gptlab.train.optim import lr_at
from gptlab.train.trainer import train

CPU = torch.device("cpu")
SMALL = ["n_layer=2", "n_head=2", "n_embd=32", "block_size=32", "batch_size=4", "eval_batches=1", "sample_tokens=0"]
TEXT = "ROMEO: What say you, my lord?"


def checksums(run: Path) -> dict[str, str]:
    """Every file of a run directory and its sha256 (and so its presence and content)."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def small_run(path: Path, data: Path, preset: str, *extra: str) -> Path:
    cfg = build_config(preset, None, [*SMALL, "device=cpu", *extra])
    cfg.data = str(data)
    train(cfg, path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, char_dataset: Path) -> Path:
    """A briefly trained modern run (Muon for the matrices, AdamW for the rest), its schedule ended."""
    return small_run(tmp_path_factory.mktemp("lesson") / "run", char_dataset, "cpu-modern", "max_steps=10")


@pytest.mark.parametrize("preset", ["cpu-tiny", "cpu-modern"])
def test_a_lesson_step_is_the_trainers_next_step_to_the_last_bit(tmp_path, char_dataset, preset):
    # With dropout on: the lesson keeps the checkpoint's random stream, as a resumed run does.
    a = small_run(tmp_path / "a", char_dataset, preset, "max_steps=2", "warmup_steps=1", "dropout=0.1")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    train(None, b, resume=True, max_steps=3)  # the trainer's own next step, from the same checkpoint

    cfg = read_config(b)
    loader = batch_loader(Dataset(char_dataset), "train", cfg.train.batch_size, cfg.model.block_size, cfg.train.seed)
    loader.load_state_dict(read_state(a).loader)  # the batch the trainer drew next
    lesson = Lesson(a, CPU)
    lesson.step_batch(loader.next_batch(), lr_at(2, cfg.train))

    trained = build_model(cfg.model)
    assert load_weights(trained, weights_path(b)) == 3
    mine, theirs = lesson.model.state_dict(), trained.state_dict()
    assert mine.keys() == theirs.keys()
    changed = [name for name in mine if not torch.equal(mine[name], read_weights(a)[name])]
    assert changed, "the step changed no weight"
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name


def read_weights(run: Path) -> dict[str, torch.Tensor]:
    model = build_model(read_config(run).model)
    load_weights(model, weights_path(run))
    return model.state_dict()


def test_steps_on_one_window_memorise_it_and_reset_goes_back(run):
    lesson = Lesson(run, CPU)
    ids = lesson.window_of_text(TEXT)
    first = lesson.train(ids, steps=1)
    assert first["lr"] == read_config(run).train.lr  # the schedule has ended (wsd: 0): the peak rate
    assert first["loss_after"] < first["loss_before"]
    assert first["losses"][0] == pytest.approx(first["loss_before"], rel=1e-4)  # no dropout: the same loss
    many = lesson.train(ids, steps=30)
    assert many["trained_steps"] == 31
    assert many["loss_after"] < 0.1 * first["loss_before"]  # memorised
    assert min(p["p_after"] for p in many["positions"]) > 0.5  # every target now likely (from about 1/65)
    assert many["losses"][-1] < many["losses"][0] < first["losses"][0]

    lesson.reset()
    again = lesson.train(ids, steps=1)
    assert again["trained_steps"] == 1
    assert again["loss_before"] == first["loss_before"]
    assert again["positions"] == first["positions"]  # the same step from the same state


def test_the_report_holds_every_position_and_the_norms(run):
    lesson = Lesson(run, CPU)
    ids = lesson.window_of_text(TEXT)
    report = lesson.train(ids, steps=2, lr=0.01)
    assert report["lr"] == 0.01
    assert len(report["positions"]) == len(report["tokens"]) == len(ids) - 1 == len(TEXT) - 1  # char tokenizer
    for i, pos in enumerate(report["positions"]):
        assert pos["index"] == i and pos["target"] == ids[i + 1] and pos["piece"] == TEXT[i + 1]
        assert pos["loss_before"] == pytest.approx(-torch.tensor(pos["p_before"]).log().item(), rel=1e-4)
        assert len(pos["top_before"]) == len(pos["top_after"]) == 5
        assert pos["top_after"][0]["prob"] >= pos["p_after"]
    mean = sum(p["loss_before"] for p in report["positions"]) / len(report["positions"])
    assert report["loss_before"] == pytest.approx(mean)
    assert list(report["grad_norm_by_layer"]) == ["embedding", "block 0", "block 1", "final norm", "head"]
    assert (
        set(report["grad_norm_by_role"])
        == set(report["update_norm_by_role"])
        == {
            "embedding",
            "matrix",
            "vector",
            "head",
        }
    )
    assert all(v > 0 for v in report["grad_norm_by_layer"].values())
    # The roles' gradient norms and the layers' are two groupings of the same numbers.
    by_layer = sum(v**2 for v in report["grad_norm_by_layer"].values())
    assert by_layer == pytest.approx(sum(v**2 for v in report["grad_norm_by_role"].values()))


def test_a_long_text_keeps_its_last_window(run):
    lesson = Lesson(run, CPU)
    text = "abcdefghij" * 10  # 100 characters, block_size 32
    ids = lesson.window_of_text(text)
    assert len(ids) == 33 and lesson.tokenizer.decode(ids) == text[-33:]


def test_the_command_leaves_the_run_unchanged(run, capsys):
    before = checksums(run)
    proc = cli_in_process(capsys, "step", run, "--text", TEXT, "--steps", "3", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["loss_after"] < report["loss_before"] and len(report["losses"]) == 3
    proc = cli_in_process(capsys, "step", run, "--steps", "2", "--device", "cpu")  # a validation window
    assert proc.returncode == 0, proc.stderr
    assert "loss over the window" in proc.stdout and "p before" in proc.stdout
    assert checksums(run) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--text", ""], "empty"),
        (["--text", "R"], "at least two"),
        (["--text", "ROMEO", "--steps", "0"], "steps=0"),
        (["--text", "ROMEO", "--steps", "101"], "steps=101"),
        (["--text", "ROMEO", "--lr", "-1"], "lr=-1"),
        (["--text", "ROMEO", "--lr", "nan"], "lr=nan"),
        (["--text", "ROMEO 😀"], "😀"),
    ],
)
def test_bad_input_is_one_line(run, capsys, args, needle):
    assert_clean_error(cli_in_process(capsys, "step", run, *args, "--device", "cpu"), needle)


def test_an_unknown_run_is_one_line(tmp_path, capsys):
    assert_clean_error(cli_in_process(capsys, "step", tmp_path / "nothing", "--text", TEXT), "not a gptlab run")


def test_a_run_whose_data_is_gone_needs_a_text(tmp_path, run, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["data"] = str(tmp_path / "no-such-data")
    (moved / "config.json").write_text(json.dumps(cfg))
    assert_clean_error(cli_in_process(capsys, "step", moved, "--device", "cpu"), "give a text")


def test_layers_are_named_along_the_data_path():
    assert layer_of("wte.weight") == layer_of("wpe.weight") == "embedding"
    assert layer_of("blocks.11.attn.qkv.weight") == "block 11"
    assert layer_of("ln_f.weight") == "final norm" and layer_of("lm_head.weight") == "head"


def test_the_page_trains_a_copy_and_resets_it(run):
    before = checksums(run)
    with TestClient(create_app(run, device="cpu")) as client:
        served = client.post("/api/next", json={"text": TEXT, "k": 3}).json()
        one = client.post("/api/train-step", json={"text": TEXT}).json()
        assert one["trained_steps"] == 1 and one["loss_after"] < one["loss_before"]
        two = client.post("/api/train-step", json={"text": TEXT, "steps": 3}).json()
        assert two["trained_steps"] == 4 and two["loss_before"] == pytest.approx(one["loss_after"])
        assert client.post("/api/next", json={"text": TEXT, "k": 3}).json() == served  # the served model is untouched
        drawn = client.post("/api/train-step", json={"text": None}).json()  # a validation window
        assert len(drawn["positions"]) == read_config(run).model.block_size
        assert client.post("/api/train-step/reset").json() == {"trained_steps": 0}
        again = client.post("/api/train-step", json={"text": TEXT}).json()
        assert again["trained_steps"] == 1 and again["positions"] == one["positions"]
        for body, needle in [
            ({"text": ""}, "empty"),
            ({"text": TEXT, "steps": 0}, "steps=0"),
            ({"text": TEXT, "steps": 101}, "steps=101"),
            ({"text": TEXT, "lr": 0}, "lr=0"),
            ({"text": "a" * 100 * 32 + "a"}, "at most 3,200"),
        ]:
            answer = client.post("/api/train-step", json=body)
            assert answer.status_code == 400 and needle in answer.json()["detail"], answer.text
        assert client.post("/api/train-step", json={"text": TEXT, "bogus": 1}).status_code == 422
    assert checksums(run) == before


def test_a_second_step_meanwhile_is_refused_with_503(run):
    with TestClient(create_app(run, device="cpu")) as client:
        client.post("/api/train-step/reset")  # makes the holder
        holder = client.app.state.lesson
        holder.lock.acquire()  # as a running step holds it
        try:
            for path in ("/api/train-step", "/api/train-step/reset"):
                answer = client.post(path, json={"text": TEXT})
                assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
                assert "already running" in answer.json()["detail"]
        finally:
            holder.lock.release()
        assert client.post("/api/train-step", json={"text": TEXT}).status_code == 200


def test_the_default_rate_follows_the_runs_schedule(tmp_path, run):
    # The same run, its schedule made cosine over 20 steps: at step 10 of 20 the rate is half the peak.
    moved = tmp_path / "mid"
    shutil.copytree(run, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["train"].update(schedule="cosine", warmup_steps=0, max_steps=20, min_lr=0.0)
    (moved / "config.json").write_text(json.dumps(cfg))
    lesson = Lesson(moved, CPU)
    tcfg = read_config(moved).train
    assert lesson.default_lr() == pytest.approx(0.5 * tcfg.lr)
    report = lesson.train(lesson.window_of_text(TEXT), steps=2)
    assert report["lr"] == lr_at(10, tcfg)  # the rate of the first of the steps
    assert lesson.default_lr() == lr_at(12, tcfg)  # the next call goes on along the schedule


def test_decoding_goes_on_while_a_lesson_step_runs(run):
    with TestClient(create_app(run, device="cpu")) as client:
        client.post("/api/train-step/reset")  # makes the holder
        holder = client.app.state.lesson
        long_step = threading.Thread(
            target=client.post, args=("/api/train-step",), kwargs={"json": {"text": TEXT, "steps": 100}}
        )
        long_step.start()
        while not holder.lock.locked() and long_step.is_alive():
            time.sleep(0.01)
        assert holder.lock.locked(), "the lesson step never started"
        answer = client.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 4, "temperature": 0})
        assert answer.status_code == 200 and client.get("/health").status_code == 200
        still_training = holder.lock.locked()  # served while the step ran: it runs off the event loop
        long_step.join()
        assert still_training


def test_a_run_without_optimizer_state_steps_with_a_fresh_optimizer(tmp_path, run, capsys):
    # As an imported run, or one written before checkpoints held the optimizer: the weights alone.
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    for state in bare.glob("checkpoints/*/train_state.*"):
        state.unlink()
    proc = cli_in_process(capsys, "step", bare, "--text", TEXT, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "note: the run keeps no optimizer state" in proc.stdout


def test_an_encoder_decoder_run_is_refused_in_one_line(tmp_path, run, capsys):
    other = tmp_path / "encdec"
    shutil.copytree(run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["arch"] = "encdec"
    (other / "config.json").write_text(json.dumps(cfg))
    assert_clean_error(cli_in_process(capsys, "step", other, "--text", TEXT, "--device", "cpu"), "encoder–decoder")
