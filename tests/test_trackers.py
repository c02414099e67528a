"""logger = "tensorboard" / "wandb": the trackers receive every metrics.jsonl number under the same
name at the same step (read back from the files they wrote), and metrics.jsonl stays."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from gptlab.config import build_config
from gptlab.errors import GptlabError
from gptlab.train import trackers
from gptlab.train.metrics import read_metrics
from gptlab.train.trainer import train

TINY = [
    "n_layer=1",
    "n_head=2",
    "n_embd=16",
    "block_size=16",
    "batch_size=4",
    "max_steps=4",
    "eval_interval=2",
    "eval_batches=1",
    "log_interval=1",
    "sample_tokens=0",
    "warmup_steps=1",
    "device=cpu",
    "checkpoint_interval=4",
]


def expected(run: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every number in metrics.jsonl, by name."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(run / "metrics.jsonl"):
        for name, value in trackers.scalars(record).items():
            series.setdefault(name, []).append((record["step"], value))
    return series


def train_with(logger: str, data: Path, root: Path) -> Path:
    cfg = build_config("cpu-tiny", None, TINY + [f"logger={logger}"])
    cfg.data = str(data)
    train(cfg, root / logger)
    return root / logger


def test_tensorboard_gets_the_metrics_jsonl_numbers(char_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train_with("tensorboard", char_dataset, tmp_path)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    got = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    want = expected(run)
    assert {"train_loss", "val_loss", "lr", "tokens_per_sec"} <= set(want) and set(got) == set(want)
    for name, points in want.items():
        assert [s for s, _ in got[name]] == [s for s, _ in points]
        assert [v for _, v in got[name]] == pytest.approx([v for _, v in points], rel=1e-6)  # float32 there


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline .wandb file. wandb 0.31 no longer ships a Python reader; the
    file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of chunks, each with a
    7-byte header (crc32, length, type: 1 whole, 2 first, 3 middle, 4 last), zero padding at a block's end."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return records


def test_wandb_offline_gets_the_metrics_jsonl_numbers(char_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    run = train_with("wandb", char_dataset, tmp_path)
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    got: dict[str, list[tuple[int, float]]] = {}
    deadline = time.time() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(log)):
        assert time.time() < deadline, "wandb never finished writing its offline run"
        time.sleep(0.2)  # wandb's core process writes the file after finish() returns
    for record in wandb_records(log):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for name, value in items.items():
                if not name.startswith("_"):  # wandb's own _step, _runtime, _timestamp
                    got.setdefault(name, []).append((items["_step"], value))
    # wandb keeps one row per step: a name logged twice at one step (tokens_seen by the evaluation
    # and by the training log) keeps its last value.
    want = {name: sorted(dict(points).items()) for name, points in expected(run).items()}
    assert got == want


def test_a_missing_tracker_package_is_one_clear_error(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def without_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_wandb)
    with pytest.raises(GptlabError, match=r"pip install 'gptlab\[wandb\]'"):
        trackers.make_tracker("wandb", tmp_path, {})
    monkeypatch.setattr(builtins, "__import__", real_import)
    monkeypatch.setenv("WANDB_MODE", "nonsense")
    with pytest.raises(GptlabError, match="logger='wandb' could not start a run: .*mode"):
        trackers.make_tracker("wandb", tmp_path, {})
    with pytest.raises(GptlabError, match="logger='x'.*must be one of"):
        build_config("cpu-tiny", None, ["logger=x"])
