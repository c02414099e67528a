"""Publishing a dataset directory: the one way every dataset build (text or pairs) writes its output.

    with staged_dataset(out) as staging:     # out locked, a killed build's staging swept, a fresh one made
        ... write the data files and tokenizer.json into staging ...
        meta = {..., "id": dataset_id(staging, splits), ...}
        publish(staging, out, meta, files)   # moved into place, meta.json last

prepare holds out's lock (locks.py) from start to end, so it is refused while a training run reads
the directory. Everything is written into a staging directory inside out first and moved into
place at the end, meta.json last, so an interrupted build never leaves a half-written dataset that
looks complete. The staging directory of a build that was killed (no `finally` ran) is swept by the
next build of the same directory, which the lock says is then the only one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gptlab.fileio import atomic_write_json
from gptlab.locks import LOCK_FILE, lock_dataset_for_writing

STAGING_PREFIX = ".prepare-"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")
# A split's data files, of either kind: SPLIT.bin or SPLIT-00000.bin, ... (text), SPLIT.source.bin,
# SPLIT.target.bin and SPLIT.index.bin (pairs).
DATA_FILE_PATTERNS = ("{split}.bin", "{split}-[0-9]*.bin", "{split}.*.bin")


def is_dataset_dir(path: Path) -> bool:
    """Whether path holds a dataset, whole or half-written: nothing but a dataset's own files
    (meta.json, tokenizer.json, the splits' data files, a build's staging, the lock file)."""
    names = {"meta.json", TOKENIZER_FILE, LOCK_FILE}
    patterns = [pattern.format(split=split) for split in SPLITS for pattern in DATA_FILE_PATTERNS]
    patterns.append(f"{STAGING_PREFIX}*")
    return all(entry.name in names or any(entry.match(p) for p in patterns) for entry in path.iterdir())


@contextmanager
def staged_dataset(out: Path) -> Iterator[Path]:
    """Lock out (created if missing) for a dataset build and yield an empty staging directory inside
    it; the staging directory goes at the end, whatever happens, and so does an out this build
    created but never wrote to."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_dataset_for_writing(out)
    try:
        for stale in out.glob(f"{STAGING_PREFIX}*"):  # a killed build's staging (the lock says none is live)
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if created and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(out, ignore_errors=True)  # failed before writing anything: leave no empty directory
        raise
    finally:
        lock.release()


def dataset_id(staging: Path, splits: dict[str, dict[str, Any]]) -> str:
    """What identifies a dataset's content: its tokenizer (staged) and each split's ids (the sha256 of
    each split's statistics); deterministic, so building the same inputs again gives the same id."""
    digest = hashlib.sha256((staging / TOKENIZER_FILE).read_bytes())
    digest.update(json.dumps({split: stat["sha256"] for split, stat in splits.items()}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def publish(staging: Path, out: Path, meta: dict[str, Any], files: Iterable[str]) -> None:
    """Move the staged dataset (its data files and tokenizer.json) into out: meta.json goes first
    (the old dataset is then no longer complete), the data files of an earlier dataset that the new
    one does not have go (of either kind), the new files come, the new meta.json last."""
    (out / "meta.json").unlink(missing_ok=True)
    keep = set(files)
    for split in SPLITS:
        for pattern in DATA_FILE_PATTERNS:
            for old in out.glob(pattern.format(split=split)):
                if old.name not in keep:
                    old.unlink()
    for name in [*sorted(keep), TOKENIZER_FILE]:
        os.replace(staging / name, out / name)
    atomic_write_json(out / "meta.json", meta)
