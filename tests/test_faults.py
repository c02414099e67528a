"""Fault injection: what a crash, a divergence or a damaged file leaves behind is always a run that
resumes from its last complete checkpoint, and every failure ends in one line."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import gptlab.runs as runs
from conftest import assert_clean_error, cli_in_process
from gptlab.runs import current_checkpoint, weights_path

SMALL = [
    "n_layer=1",
    "n_head=2",
    "n_embd=16",
    "block_size=16",
    "batch_size=4",
    "eval_batches=1",
    "sample_tokens=0",
    "eval_interval=100",
    "log_interval=1",
    "device=cpu",
    "warmup_steps=0",
]


class Killed(BaseException):
    """Stands for kill -9 at a chosen point (a BaseException, so no `except Exception` handles it)."""


def train(capsys, data, run, steps, *extra):
    return cli_in_process(capsys, "train", "--data", data, "--out", run, "--max-steps", steps, *SMALL, *extra)


def resume(capsys, run, steps):
    return cli_in_process(capsys, "train", "--resume", run, "--max-steps", steps)


def step_of(run):
    return json.loads((weights_path(run).parent / "train_state.json").read_text())["step"]


@pytest.fixture
def run4(tmp_path, char_dataset, capsys):
    """A run checkpointed at steps 2 and 4."""
    run = tmp_path / "run"
    done = train(capsys, char_dataset, run, 4, "checkpoint_interval=2", "keep_checkpoints=2")
    assert done.returncode == 0, done.stderr
    return run


def test_sets_are_kept_as_configured_and_files_are_readable_by_all(run4):
    assert [p.name for p in runs.checkpoint_sets(run4)] == ["step-0000004", "step-0000002"]
    assert json.loads((run4 / "checkpoints" / "latest.json").read_text())["checkpoint"] == "step-0000004"
    umask = os.umask(0)
    os.umask(umask)
    assert weights_path(run4).stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600 like other files' temps
    assert not [p for p in (run4 / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("where", ["writing the set", "before the pointer moves"])
def test_a_kill_during_a_checkpoint_leaves_the_previous_one_resumable(run4, capsys, monkeypatch, where):
    calls = {"n": 0}
    if where == "writing the set":
        real = runs._fsync

        def crash(path):
            calls["n"] += 1
            if calls["n"] == 2:  # weights on disk, optimizer state not yet
                raise Killed()
            real(path)

        monkeypatch.setattr(runs, "_fsync", crash)
    else:

        def crash(*args):
            raise Killed()

        monkeypatch.setattr(runs, "atomic_write", crash)  # the set is renamed into place, latest.json not moved
    with pytest.raises(Killed):
        resume(capsys, run4, 6)
    monkeypatch.undo()
    assert step_of(run4) == 4
    done = resume(capsys, run4, 6)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout and "at step 4" in done.stdout
    assert step_of(run4) == 6


def test_resume_falls_back_to_the_newest_intact_set(run4, capsys):
    newest = run4 / "checkpoints" / "step-0000004" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF  # a flipped bit inside a tensor: safetensors alone would accept it
    newest.write_bytes(bytes(data))
    assert_clean_error(cli_in_process(capsys, "sample", run4, "--max-new-tokens", "2"), "checksum", "model.safetensors")
    assert current_checkpoint(run4, verify=True).name == "step-0000002"
    done = resume(capsys, run4, 5)
    assert done.returncode == 0, done.stderr
    assert "at step 2" in done.stdout and "step-0000004 is damaged or incomplete" in done.stdout
    # Step 4 was saved again on the way (the damaged set replaced by a good one), then step 5.
    assert [p.name for p in runs.checkpoint_sets(run4)] == ["step-0000005", "step-0000004"]
    runs.verify_files(run4 / "checkpoints" / "step-0000004")


def test_an_incomplete_set_and_a_lost_pointer_are_ignored(run4, capsys):
    (run4 / "checkpoints" / "latest.json").unlink()
    shutil.copytree(run4 / "checkpoints" / "step-0000004", run4 / "checkpoints" / "step-0000006")
    (run4 / "checkpoints" / "step-0000006" / "manifest.json").unlink()  # never finished
    assert current_checkpoint(run4).name == "step-0000004"
    assert cli_in_process(capsys, "sample", run4, "--max-new-tokens", "2").returncode == 0


def test_a_run_in_the_older_flat_layout_is_read_and_migrated(run4, capsys):
    newest = run4 / "checkpoints" / "step-0000004"
    for name in ("model.safetensors", "train_state.pt", "train_state.json"):
        shutil.copy(newest / name, run4 / name)
    shutil.rmtree(run4 / "checkpoints")
    assert weights_path(run4) == run4 / "model.safetensors"
    assert cli_in_process(capsys, "sample", run4, "--max-new-tokens", "2").returncode == 0
    done = resume(capsys, run4, 5)
    assert done.returncode == 0 and "at step 4" in done.stdout, done.stderr
    assert weights_path(run4).parent.name == "step-0000005"
    assert not (run4 / "model.safetensors").exists() and not (run4 / "train_state.json").exists()


def test_divergence_never_replaces_a_finite_checkpoint(tmp_path, char_dataset, capsys):
    # The issue's reproduction: step 2's loss is finite, its update is not.
    run = tmp_path / "run"
    done = train(capsys, char_dataset, run, 20, "lr=100", "min_lr=100", "checkpoint_interval=1")
    assert_clean_error(done, "diverged", "lower lr", "is kept")
    for tensor in load_file(weights_path(run)).values():
        assert torch.isfinite(tensor).all()
    assert cli_in_process(capsys, "sample", run, "--max-new-tokens", "3").returncode == 0


def test_nan_weights_after_a_finite_loss_are_caught_before_saving(tmp_path, char_dataset, capsys, monkeypatch):
    from gptlab.train.step import StepRunner

    real = StepRunner.step

    def poisoned(self, next_batch, lr_factor):
        loss = real(self, next_batch, lr_factor)
        if poisoned.calls == 2:
            with torch.no_grad():
                next(self.raw.parameters()).fill_(float("nan"))  # the loss returned is still finite
        poisoned.calls += 1
        return loss

    poisoned.calls = 0
    monkeypatch.setattr(StepRunner, "step", poisoned)
    run = tmp_path / "run"
    done = train(capsys, char_dataset, run, 6, "checkpoint_interval=1")
    assert_clean_error(done, "diverged at step 3", "became nan or infinite", "step 2", "is kept")
    assert step_of(run) == 2
    monkeypatch.undo()
    again = resume(capsys, run, 4)
    assert again.returncode == 0 and "at step 2" in again.stdout, again.stderr


# --- locks, a replaced dataset, stale temporaries -------------------------------------------------


def test_a_second_trainer_on_the_same_run_is_refused(tmp_path, char_dataset):
    import time

    from conftest import popen_cli, run_cli

    run = tmp_path / "run"
    first = popen_cli("train", "--data", char_dataset, "--out", run, "--max-steps", "100000", *SMALL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "metrics.jsonl").is_file():
            time.sleep(0.05)
        assert (run / "metrics.jsonl").is_file(), "the first trainer never started"
        second = run_cli("train", "--data", char_dataset, "--out", run, "--max-steps", "5", *SMALL)
        assert_clean_error(second, "in use by another gptlab process")
        assert_clean_error(run_cli("train", "--resume", run), "in use by another gptlab process")
        assert first.poll() is None  # the first one trains on, undisturbed
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 130 and step_of(run) > 0  # SIGTERM: checkpointed and stopped


def test_a_held_run_lock_refuses_train_and_leaves_no_empty_directory(tmp_path, char_dataset, capsys):
    from gptlab.locks import lock_run

    run = tmp_path / "run"
    with lock_run(run, create=True):  # what a trainer in another process holds
        assert_clean_error(train(capsys, char_dataset, run, 3), "in use")
    assert [p.name for p in run.iterdir()] == [".gptlab.lock"]  # untouched
    # A new run refused for another reason does not leave an empty directory behind.
    not_data = tmp_path / "notes"  # a directory, but no prepared dataset
    not_data.mkdir()
    assert_clean_error(train(capsys, not_data, tmp_path / "new", 3), "not a prepared dataset")
    assert not (tmp_path / "new").exists()


def test_prepare_over_a_dataset_in_use_is_refused(tmp_path, char_dataset, shakespeare_txt, capsys):
    from gptlab.locks import lock_dataset_for_reading

    data = tmp_path / "data"
    shutil.copytree(char_dataset, data)
    before = (data / "meta.json").read_bytes()
    with lock_dataset_for_reading(data):  # what a training run reading it holds
        assert_clean_error(
            cli_in_process(capsys, "prepare", shakespeare_txt, "--out", data, "--val-fraction", "0.2"),
            "in use by another gptlab process",
        )
    assert (data / "meta.json").read_bytes() == before
    assert not list(data.glob(".prepare-*"))


def test_a_dataset_replaced_during_training_stops_it_with_one_line(
    tmp_path, char_dataset, shakespeare_txt, capsys, monkeypatch
):
    import gptlab.train.trainer as trainer
    from gptlab.data.prepare import prepare

    data, other = tmp_path / "data", tmp_path / "other"
    shutil.copytree(char_dataset, data)
    prepare([str(shakespeare_txt)], other, "char", val_fraction=0.3, progress=False)
    assert json.loads((other / "meta.json").read_text())["id"] != json.loads((data / "meta.json").read_text())["id"]
    real, calls = trainer.estimate_loss, []

    def replace_then_estimate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # between the evaluations at steps 0 and 4, as a copy or a lock-less prepare would
            for path in other.iterdir():
                if path.is_file() and path.name != ".gptlab.lock":
                    shutil.copy(path, data / path.name)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "estimate_loss", replace_then_estimate)
    run = tmp_path / "run"
    done = train(capsys, data, run, 8, "eval_interval=4", "checkpoint_interval=2")
    assert_clean_error(done, "was replaced", "stopped at step 4", "last checkpoint: step 2")
    assert [
        m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in m
    ] == [0]  # no loss measured on the new data was recorded
    assert step_of(run) == 2


def test_stale_temporaries_are_removed_by_resume_and_prepare(run4, tmp_path, char_dataset, shakespeare_txt, capsys):
    junk = [
        run4 / ".model.safetensors.x1.tmp",
        run4 / ".loss.png.x2.tmp",
        run4 / "checkpoints" / ".staging-step-0000006-99999" / "model.safetensors",
    ]
    for path in junk:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    done = resume(capsys, run4, 5)
    assert done.returncode == 0, done.stderr
    assert not [p for p in junk if p.exists()] and not (run4 / "checkpoints" / ".staging-step-0000006-99999").exists()
    data = tmp_path / "data"
    shutil.copytree(char_dataset, data)
    (data / ".prepare-killed").mkdir()
    (data / ".prepare-killed" / "train-00000.bin").write_bytes(b"\0" * 1000)
    assert cli_in_process(capsys, "prepare", shakespeare_txt, "--out", data).returncode == 0
    assert not (data / ".prepare-killed").exists()


# --- one line for every bad value and damaged file ----------------------------------------------


@pytest.fixture
def nested_json(tmp_path):
    path = tmp_path / "nested.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


@pytest.mark.parametrize(
    "args, needles",
    [
        (["train", "--data", "{data}", "--out", "{tmp}/r", "seed=-1"], ["seed=-1"]),
        (["train", "--data", "{data}", "--out", "{tmp}/r", f"seed={2**70}"], ["seed=", "2**32"]),
        (["train", "--data", "{data}", "--out", "{tmp}/r", f"block_size={10**12}"], ["block_size="]),
        (["sample", "{run}", "--seed", str(2**64)], ["seed="]),
        (["sample", "{run}", "--temperature", "1e-40"], ["temperature="]),
        (["sample", "{run}", "--repetition-penalty", "1e-300"], ["repetition_penalty="]),
        (["sample", "{run}", "--num-samples", str(10**12)], ["num_samples="]),
        (["prepare", "{tmp}/nested.json", "--out", "{tmp}/d"], ["nested deeper than"]),
        (["train", "--resume", "{run}", "--max-steps", "3"], ["below the step", "(4)"]),
    ],
)
def test_bad_values_are_one_line(run4, char_dataset, nested_json, tmp_path, capsys, args, needles):
    config_before = (run4 / "config.json").read_bytes()
    args = [a.format(tmp=tmp_path, data=char_dataset, run=run4) for a in args]
    assert_clean_error(cli_in_process(capsys, *args), *needles)
    assert (run4 / "config.json").read_bytes() == config_before  # --max-steps did not rewrite it
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_damaged_run_files_are_one_line_naming_the_file(run4, capsys):
    cfg = json.loads((run4 / "config.json").read_text())
    cfg["model"]["n_head"] = 3
    (run4 / "config.json").write_text(json.dumps(cfg))
    for command in (["sample", run4], ["eval", run4], ["train", "--resume", run4, "--max-steps", "6"]):
        assert_clean_error(cli_in_process(capsys, *command), "config.json is invalid", "n_head=3")
    cfg["model"]["n_head"] = 2
    (run4 / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((run4 / "tokenizer.json").read_text())
    tok["chars"] = tok["chars"][:-5]  # entries removed
    (run4 / "tokenizer.json").write_text(json.dumps(tok))
    assert_clean_error(cli_in_process(capsys, "sample", run4), "tokenizer.json is corrupt", "vocab_size")
    (weights_path(run4).parent / "train_state.json").write_text('{"step": 4, "loader": ')  # cut short
    # The damaged newest set is skipped for the intact older one (keep_checkpoints=2 in run4).
    assert current_checkpoint(run4, verify=True).name == "step-0000002"
    shutil.rmtree(run4 / "checkpoints" / "step-0000002")
    assert_clean_error(
        cli_in_process(capsys, "train", "--resume", run4, "--max-steps", "6"), "corrupt checkpoint", "train_state.json"
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (mounting needs root; elsewhere the test is skipped, saying why)."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or 'mount failed'}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_mid_checkpoint_is_one_line_and_keeps_the_previous(small_disk, char_dataset, capsys):
    run = small_disk / "run"
    done = train(capsys, char_dataset, run, 2, "checkpoint_interval=2")
    assert done.returncode == 0, done.stderr
    weights = weights_path(run).read_bytes()
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 12 * 1024))  # room for logs, not a set
    full = resume(capsys, run, 4)
    assert_clean_error(full, "no space left")
    assert step_of(run) == 2 and weights_path(run).read_bytes() == weights
    filler.unlink()
    again = resume(capsys, run, 4)
    assert again.returncode == 0 and "at step 2" in again.stdout, again.stderr
    assert step_of(run) == 4


@pytest.fixture
def read_only(tmp_path):
    """Make directories unwritable: by permissions for a normal user; root ignores those, so for root
    a read-only bind mount over the directory. lock(path) returns the OS's words for the failure."""
    import subprocess

    done: list = []

    def lock(path):
        if os.geteuid() != 0:
            os.chmod(path, 0o555)
            done.append(lambda: os.chmod(path, 0o755))
            return "permission denied"
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        done.append(lambda: subprocess.run(["umount", "-l", str(path)], check=False))
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        return "read-only file system"

    yield lock
    for undo in reversed(done):
        undo()


def test_read_only_directories_are_one_line(run4, char_dataset, shakespeare_txt, tmp_path, capsys, read_only):
    data = tmp_path / "data"
    shutil.copytree(char_dataset, data)
    why = read_only(run4)
    read_only(data)
    # Train and prepare check first that they can write (os.access: false for either cause).
    assert_clean_error(resume(capsys, run4, 6), "cannot write to", "permission denied")
    assert_clean_error(cli_in_process(capsys, "prepare", shakespeare_txt, "--out", data), "permission denied")
    assert_clean_error(cli_in_process(capsys, "report", run4), why)
