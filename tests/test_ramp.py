"""Schedules on the training shape (train/ramp.py): windows and batches that start small and grow,
drawn the same on every rank and after a resume, counted right, refused where they cannot apply."""

import json

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, interrupted_at, run_cli
from gptlab.config import RunConfig, TrainConfig, build_config
from gptlab.data.loader import BatchLoader, Dataset
from gptlab.errors import GptlabError
from gptlab.train.prefetch import PrefetchingLoader
from gptlab.train.ramp import SEQ_MULTIPLE, ramp_steps, shape_at, tokens_between
from test_encdec import couplets  # noqa: F401 (a pairs dataset of real Tang couplets)
from test_optim import MODERN_TINY
from test_prepare_streaming import two_far_apart_shards

SCHEDULE = ["seq_len_start=8", "batch_size_start=2", "ramp_fraction=0.6"]
TINY = [*MODERN_TINY, "dropout=0"]


def records(run, key):
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r}


def test_shape_grows_linearly_from_the_start_sizes_to_the_full_ones_then_stays():
    tcfg = TrainConfig(batch_size=12, batch_size_start=4, seq_len_start=16, ramp_fraction=0.3, max_steps=100)
    shapes = [shape_at(s, tcfg, 64) for s in range(100)]
    assert ramp_steps(tcfg) == 30
    assert shapes[0] == (4, 16) and all(shape == (12, 64) for shape in shapes[30:])
    batches, windows = zip(*shapes)
    assert list(batches) == sorted(batches) and list(windows) == sorted(windows)  # never shrinks
    assert set(windows) == {16, 24, 32, 40, 48, 56, 64}  # every step of 8 on the way, no other length
    assert set(batches) == set(range(4, 13))
    assert shapes[15] == (8, 40)  # halfway: halfway in both (4 + 8 x 15 // 30, 16 + 48 x 15 // 30)


def test_a_start_below_the_rounding_step_and_an_odd_block_size_still_start_and_end_exactly():
    tcfg = TrainConfig(seq_len_start=5, ramp_fraction=1.0, max_steps=10)
    windows = [shape_at(s, tcfg, 30)[1] for s in range(11)]
    assert windows[0] == 5 and windows[-1] == 30  # the full block, though 30 is no multiple of 8
    assert all(w == 5 or w % SEQ_MULTIPLE == 0 for w in windows[:-1])


def test_off_by_default_every_step_trains_on_the_full_shape():
    tcfg = TrainConfig(batch_size=12, max_steps=50)
    assert {shape_at(s, tcfg, 64) for s in range(50)} == {(12, 64)}
    assert tokens_between(0, 50, tcfg, 64, micro_batches=3) == 50 * 12 * 64 * 3


def test_tokens_between_is_the_sum_of_the_steps_shapes():
    tcfg = TrainConfig(batch_size=12, batch_size_start=3, seq_len_start=8, ramp_fraction=0.5, max_steps=40)
    for first, last in [(0, 40), (7, 33), (25, 40), (30, 31)]:
        expected = sum(b * t * 2 for b, t in (shape_at(s, tcfg, 64) for s in range(first, last)))
        assert tokens_between(first, last, tcfg, 64, micro_batches=2) == expected


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["seq_len_start=65", "block_size=64"], "seq_len_start=65 must be at most block_size=64"),
        (["seq_len_start=-8"], "seq_len_start=-8 must be >= 0"),
        (["batch_size_start=-1"], "batch_size_start=-1 must be >= 0"),
        (["batch_size_start=20", "batch_size=12"], "batch_size_start=20 must be at most batch_size=12"),
        (["seq_len_start=8", "ramp_fraction=0"], "ramp_fraction=0.0 must be in (0, 1]"),
        (["ramp_fraction=1.5"], "ramp_fraction=1.5 must be in (0, 1]"),
        (["seq_len_start=8", "arch=encdec"], "seq_len_start=8 is for arch='gpt' only"),
    ],
)
def test_bad_schedule_values_are_refused_by_name(overrides, needle):
    with pytest.raises(GptlabError) as info:
        build_config("cpu-tiny", None, overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_post_training_refuses_a_shape_schedule():
    cfg = RunConfig()
    cfg.posttrain.stage = "sft"
    cfg.train.batch_size_start = 2
    with pytest.raises(GptlabError, match="batch_size_start=2 is for pretraining only"):
        cfg.validate()


def test_loader_draws_smaller_batches_of_shorter_windows_and_its_full_shape_is_bit_exact(char_dataset):
    ds = Dataset(char_dataset)
    data = np.fromfile(char_dataset / "train.bin", dtype=np.uint16)
    plain, sized = BatchLoader(ds, "train", 4, 16, seed=3), BatchLoader(ds, "train", 4, 16, seed=3)
    for _ in range(3):  # asking for the loader's own shape draws exactly what asking for nothing draws
        assert torch.equal(plain.next_batch().inputs, sized.next_batch(4, 16).inputs)
    small = sized.next_batch(2, 8)
    assert small.inputs.shape == small.targets.shape == (2, 8)
    assert torch.equal(small.inputs[:, 1:], small.targets[:, :-1])
    for row in torch.cat([small.inputs, small.targets[:, -1:]], 1).numpy():  # 9 consecutive tokens of the file
        assert any(np.array_equal(data[s : s + 9], row) for s in np.flatnonzero(data == row[0]))


def test_short_windows_never_span_two_shards_and_reach_every_place_they_fit(tmp_path):
    loader = BatchLoader(two_far_apart_shards(tmp_path), "train", batch_size=64, block_size=16, seed=0)
    starts = set()
    for _ in range(40):
        batch = loader.next_batch(32, 4)
        window = np.concatenate([batch.inputs.numpy(), batch.targets.numpy()[:, -1:]], axis=1)
        assert window.shape == (32, 5) and (np.diff(window, axis=1) == 1).all()
        starts.update(window[:, 0].tolist())
    # Up to each shard's last window of 5 tokens, past where a full window of 17 could start.
    assert max(s for s in starts if s < 1000) == 100 - 5 and max(starts) == 1040 - 5


def test_prefetching_asks_the_schedule_per_micro_step_alike_on_every_rank_and_resumes_there(char_dataset):
    ds = Dataset(char_dataset)

    def shapes(micro):
        return 1 + micro % 3, 8 if micro < 2 else 16

    plain = BatchLoader(ds, "train", 3, 16, seed=5)
    stream = [plain.next_batch(*shapes(m // 2)) for m in range(8)]  # two ranks: two batches per micro-step
    ranks = [PrefetchingLoader(BatchLoader(ds, "train", 3, 16, seed=5), r, 2, shapes=shapes) for r in range(2)]
    try:
        for micro in range(3):
            for r, prefetching in enumerate(ranks):
                got = prefetching.next_batch().inputs
                assert got.shape == shapes(micro) and torch.equal(got, stream[2 * micro + r].inputs)
        state = ranks[0].state_dict()
    finally:
        for prefetching in ranks:
            prefetching.close()
    resumed = PrefetchingLoader(BatchLoader(ds, "train", 3, 16, seed=99), 0, 2, shapes=shapes)
    resumed.load_state_dict(state, micro_step=3)
    try:
        assert torch.equal(resumed.next_batch().inputs, stream[6].inputs)  # micro-step 3's shape, rank 0's batch
    finally:
        resumed.close()


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one_and_counts_its_tokens(
    char_dataset, tmp_path, monkeypatch, capsys
):
    from gptlab.train import trainer

    def config():
        cfg = build_config("cpu-small", None, [*TINY, *SCHEDULE])
        cfg.data = str(char_dataset)
        return cfg

    trainer.train(config(), tmp_path / "straight")
    assert "shape schedule: windows grow from 8 to 32 tokens" in capsys.readouterr().out
    with interrupted_at(monkeypatch, 3):  # inside the ramp
        first = trainer.train(config(), tmp_path / "resumed")
    assert first.interrupted and first.step < 6
    trainer.train(None, tmp_path / "resumed", resume=True)
    straight, resumed = records(tmp_path / "straight", "train_loss"), records(tmp_path / "resumed", "train_loss")
    assert sorted(resumed) == list(range(1, 11))
    tcfg = config().train
    for step in range(1, 11):
        assert resumed[step]["train_loss"] == pytest.approx(straight[step]["train_loss"], abs=1e-6), step
        # tokens seen: what the steps so far trained on, fewer than the full shape's while it grows
        assert resumed[step]["tokens_seen"] == straight[step]["tokens_seen"] == tokens_between(0, step, tcfg, 32, 1)
    assert straight[1]["tokens_seen"] == 2 * 8 and straight[10]["tokens_seen"] < 10 * 8 * 32
    val = records(tmp_path / "straight", "val_loss")
    assert records(tmp_path / "resumed", "val_loss")[10]["val_loss"] == pytest.approx(val[10]["val_loss"], abs=1e-6)
    info = run_cli("info", "--run", tmp_path / "resumed")  # the run's schedule, as it trained
    assert info.returncode == 0 and "batches from 2 to 8 windows over the first 6 of 10 steps" in info.stdout


def test_the_schedule_changes_training_and_evaluation_stays_at_the_full_shape(char_dataset, tmp_path):
    from gptlab.train import trainer

    runs = {}
    for name, extra in [("plain", []), ("ramped", SCHEDULE)]:
        cfg = build_config("cpu-small", None, [*TINY, "max_steps=2", "eval_interval=100", *extra])
        cfg.data = str(char_dataset)
        trainer.train(cfg, tmp_path / name)
        runs[name] = records(tmp_path / name, "val_loss")
    # Step 0's evaluation, before any training, reads the same full-size windows with or without a schedule.
    assert runs["ramped"][0]["val_loss"] == runs["plain"][0]["val_loss"]
    assert runs["ramped"][2]["val_loss"] != runs["plain"][2]["val_loss"]


def test_info_says_the_schedule():
    proc = run_cli("info", "--preset", "cpu-small", "seq_len_start=16", "batch_size_start=4", "max_steps=1000")
    assert proc.returncode == 0, proc.stderr
    assert "windows grow from 16 to 64 tokens" in proc.stdout and "batches from 4 to" in proc.stdout
    assert "over the first 300 of 1,000 steps" in proc.stdout
    plain = run_cli("info", "--preset", "cpu-small")
    assert "shape schedule" not in plain.stdout


def test_training_refuses_a_schedule_on_a_dataset_of_pairs(tmp_path, couplets):  # noqa: F811
    proc = run_cli("train", "--data", couplets, "--out", tmp_path / "r", "--max-steps", "2", "seq_len_start=8")
    assert_clean_error(proc, "dataset of pairs")
    assert not (tmp_path / "r").exists()
