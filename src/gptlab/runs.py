"""A run directory: what a training run leaves behind and what `sample`, `eval` and `serve` read.

    RUN/config.json        the RunConfig (model shape, training settings, dataset path)
    RUN/tokenizer.json     the tokenizer, so nothing needs the corpus again
    RUN/checkpoints/step-0000500/   one complete checkpoint set:
        model.safetensors  weights (no pickled code), with the step in its metadata
        train_state.*      optimizer, RNG and data-order state for an exact resume (train/checkpoint.py)
        manifest.json      written last: each file's size and sha256 (a set without it is incomplete)
    RUN/checkpoints/latest.json   which set is current, replaced atomically once that set is whole
    RUN/history/step_000050.safetensors   the weights kept at step 50 (train/history.py says which
                           steps; written atomically, weights only), for the page's slider and --step
    RUN/metrics.jsonl      one JSON object per logged step
    RUN/samples.txt        continuations of the sample prompt taken during training
    RUN/.gptlab.lock       held (flock) by the process training the run (locks.py)

A set is built in a hidden staging directory and renamed into place whole, then the pointer moves
to it, then older sets beyond keep_checkpoints go: a crash at any point leaves the previous complete
set and a pointer to it (or to nothing readers trust, in which case they take the newest complete
set). Runs written before checkpoint sets existed keep model.safetensors and train_state.* at the
top of RUN; they are read as they are, and their first new checkpoint replaces them.

This module is the one place that knows these names; everything else asks it for paths.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from gptlab.config import RunConfig
from gptlab.errors import GptlabError, describe_os_error
from gptlab.fileio import atomic_write, plain_mode
from gptlab.jsonfile import MiB, read_json
from gptlab.model import Model, build_model
from gptlab.tokenizers import Tokenizer, load_tokenizer

CONFIG, TOKENIZER, WEIGHTS = "config.json", "tokenizer.json", "model.safetensors"
STATE_PT, STATE_JSON = "train_state.pt", "train_state.json"
CHECKPOINTS, LATEST, MANIFEST = "checkpoints", "latest.json", "manifest.json"
HISTORY = "history"
_SET = re.compile(r"step-(\d+)")
_KEPT = re.compile(r"step_(\d+)\.safetensors")
_STAGING, _REPLACED = ".staging-", ".replaced-"


@dataclass
class LoadedRun:
    """A trained model ready for inference."""

    path: Path
    config: RunConfig
    tokenizer: Tokenizer
    model: Model
    step: int


def read_config(run: str | Path) -> RunConfig:
    """The RunConfig of a run directory, or a clear error if it is not one."""
    path = Path(run)
    if not (path / CONFIG).is_file():
        raise GptlabError(f"{path} is not a gptlab run (no {CONFIG}); train one with `gptlab train`")
    data = read_json(path / CONFIG, 1 * MiB)
    try:
        cfg = RunConfig.from_dict(data)
        cfg.validate()  # a hand-edited or damaged file must not reach the model
        return cfg
    except (AttributeError, TypeError) as exc:  # not an object, or a section that is not one
        raise GptlabError(f"{path / CONFIG} is corrupt: {exc}") from None
    except GptlabError as exc:
        raise GptlabError(f"{path / CONFIG} is invalid: {exc}") from None


def is_run_dir(path: str | Path) -> bool:
    """Whether path is a gptlab run (its config.json holds a model and a train section), whole or
    half-written: the kind of directory train, finetune, align and import may write into."""
    config = Path(path) / CONFIG
    try:
        if not config.is_file() or config.stat().st_size > 1 << 20:  # a run's config is a few KB
            return False
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and isinstance(data.get("train"), dict)


def save_weights(model: Model, path: str | Path, step: int) -> None:
    """Write model.safetensors atomically (tied weights stored once)."""
    atomic_write(path, lambda tmp: write_weights(model, tmp, step))


def write_weights(model: Model, path: str | Path, step: int) -> None:
    """Write weights to path as it is (callers make it atomic), with the step in the metadata."""
    save_model(model, str(path), metadata={"step": str(step)})


def load_weights(model: Model, path: str | Path) -> int:
    """Load weights saved by save_weights into model; return the step they were saved at."""
    path = Path(path)
    if not path.is_file():
        raise GptlabError(f"{path.parent} has no weights ({path.name}); has it trained a step yet?")
    try:
        missing, unexpected = load_model(model, path, strict=False)
        if missing or unexpected:
            raise GptlabError(
                f"{path} does not match the run's config "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return int((f.metadata() or {}).get("step", 0))
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise GptlabError(f"corrupt checkpoint {path}: {str(exc).splitlines()[0]}") from None


def load_run(run: str | Path, device: str | torch.device = "cpu", step: int | None = None) -> LoadedRun:
    """Config, tokenizer and weights of a run (the current checkpoint set, its checksums verified, or with
    step the weights kept in its history at that step), the model in eval mode on device."""
    path = Path(run)
    cfg = read_config(path)
    tokenizer = load_tokenizer(path / TOKENIZER)
    if cfg.model.vocab_size and tokenizer.vocab_size != cfg.model.vocab_size:
        # Ids the model can emit that the tokenizer cannot decode (or the reverse).
        raise GptlabError(
            f"{path / TOKENIZER} is corrupt: vocab_size {tokenizer.vocab_size} does not match "
            f"the model's vocab_size={cfg.model.vocab_size} in {CONFIG}"
        )
    if step is not None:
        model = load_kept_model(path, cfg, step, device)
        return LoadedRun(path, cfg, tokenizer, model, step)
    model = build_model(cfg.model)
    weights = weights_path(path)
    verify_files(weights.parent, [WEIGHTS])
    at = load_weights(model, weights)
    model.to(device).eval()
    return LoadedRun(path, cfg, tokenizer, model, at)


# --- the history: weights kept at a thinned series of steps (train/history.py) ---------------------


def history_file(run: str | Path, step: int) -> Path:
    """Where the weights kept at `step` are (or would be)."""
    return Path(run) / HISTORY / f"step_{step:06d}.safetensors"


def history_steps(run: str | Path) -> list[int]:
    """The steps whose weights a run keeps, in order ([] when it keeps none)."""
    root = Path(run) / HISTORY
    if not root.is_dir():
        return []
    found = (_KEPT.fullmatch(entry.name) for entry in root.iterdir())
    return sorted(int(match.group(1)) for match in found if match)


def history_bytes(run: str | Path) -> int:
    """What a run's history costs on disk: the kept weights' total size in bytes."""
    return sum(history_file(run, step).stat().st_size for step in history_steps(run))


def save_kept_weights(model: Model, run: str | Path, step: int) -> None:
    """Keep the weights at `step` in the run's history (atomically; the same step written again, as by a
    resumed run replaying it, replaces the file)."""
    path = history_file(run, step)

    def write(tmp: str) -> None:
        write_weights(model, tmp, step)
        plain_mode(tmp)  # safetensors makes its file private (0600)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except (OSError, RuntimeError, SafetensorError) as exc:  # safetensors wraps the OS error
        raise GptlabError(
            f"could not keep the weights of step {step} in {path.parent}: {_write_failure(exc, Path(run))}"
        ) from None


def check_kept(run: str | Path, step: int) -> None:
    """Refuse, in one line that lists the kept steps, a step whose weights the run did not keep."""
    if isinstance(step, bool) or not isinstance(step, int) or not history_file(run, step).is_file():
        kept = history_steps(run)
        listed = ", ".join(map(str, kept)) if kept else "none (train with history=true to keep them)"
        raise GptlabError(f"step={step!r} is not kept in this run's history; kept steps: {listed}")


def load_kept_model(run: str | Path, cfg: RunConfig, step: int, device: str | torch.device = "cpu") -> Model:
    """The run's model with the weights it kept at `step`, in eval mode on device; a step it did not keep
    is refused in one line that lists the kept ones."""
    check_kept(run, step)
    model = build_model(cfg.model)
    load_weights(model, history_file(run, step))
    return model.to(device).eval()


# --- checkpoint sets ------------------------------------------------------------------------------


def checkpoint_sets(run: str | Path) -> list[Path]:
    """The complete checkpoint sets of a run (those with a manifest), newest step first."""
    root = Path(run) / CHECKPOINTS
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            match = _SET.fullmatch(entry.name)
            if match and (entry / MANIFEST).is_file():
                found.append((int(match.group(1)), entry))
    return [entry for _, entry in sorted(found, reverse=True)]


def _pointed(run: Path) -> Path | None:
    """The set latest.json names, when it names a complete one."""
    try:
        name = json.loads((run / CHECKPOINTS / LATEST).read_text(encoding="utf-8"))["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    target = run / CHECKPOINTS / str(name)
    return target if _SET.fullmatch(str(name)) and (target / MANIFEST).is_file() else None


def current_checkpoint(run: str | Path, verify: bool = False) -> Path | None:
    """The directory holding the checkpoint to read: the set latest.json points to when it is
    complete (and, with verify, its checksums match), else the newest such set; RUN itself for a
    run in the older flat layout; None when the run has no checkpoint."""
    run = Path(run)
    pointed = _pointed(run)
    candidates = ([pointed] if pointed else []) + [s for s in checkpoint_sets(run) if s != pointed]
    for candidate in candidates:
        if not verify:
            return candidate
        try:
            verify_files(candidate)
            return candidate
        except GptlabError:
            continue  # damaged or half-gone: fall back to the next older complete set
    if candidates:
        verify_files(candidates[0])  # none is intact: say what is wrong with the newest
    if (run / STATE_JSON).is_file() or (run / WEIGHTS).is_file():
        return run  # older flat layout
    return None


def weights_path(run: str | Path) -> Path:
    """Where a run's current weights are (through latest.json; RUN/model.safetensors for an
    older flat run, or when there is no checkpoint yet, so errors name the usual file)."""
    found = current_checkpoint(run)
    return (found or Path(run)) / WEIGHTS


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_verified: set[tuple] = set()  # (directory, names, stats) already checked: a resume reads a set 4 times


def verify_files(directory: str | Path, names: list[str] | None = None) -> None:
    """Check the files of a checkpoint set (or only names) against its manifest: size and sha256.
    A set without a manifest (the older flat layout) is not checked."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return
    try:
        stats = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir()))
    except OSError:
        stats = None
    key = (str(directory), tuple(names or ()), stats)
    if stats is not None and key in _verified:
        return
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
        for name in names or list(files):
            entry, path = files[name], directory / name
            if not path.is_file():
                raise GptlabError(f"corrupt checkpoint {directory}: {name} is missing")
            if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
                raise GptlabError(
                    f"corrupt checkpoint {directory}: {name} does not match its checksum "
                    f"in {MANIFEST} (damaged on disk?)"
                )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise GptlabError(f"corrupt checkpoint {directory}: {MANIFEST}: {exc}") from None
    if stats is not None:
        _verified.add(key)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_checkpoint(run: str | Path, step: int, write: Callable[[Path], list[str]], keep: int = 1) -> Path:
    """Write one checkpoint set atomically and make it current; return its directory.

    write(staging) writes the set's files into a fresh directory and returns their names; then a
    manifest goes beside them, the directory is renamed to step-N, latest.json is replaced to point
    at it, and sets beyond the newest `keep` go (the previous one stays until the new one is in
    place). A failure at any point leaves the previous set current and whole.
    """
    run = Path(run)
    root = run / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    staging = root / f"{_STAGING}{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        try:
            names = write(staging)
        except (OSError, RuntimeError, SafetensorError) as exc:  # torch and safetensors wrap the OS error
            raise GptlabError(
                f"could not write checkpoint {name} in {run}: {_write_failure(exc, root)}; "
                "the previous checkpoint is kept"
            ) from None
        umask = os.umask(0)
        os.umask(umask)
        files = {}
        for file in names:
            os.chmod(staging / file, 0o666 & ~umask)  # some writers create files private (0600)
            _fsync(staging / file)  # on disk before the manifest vouches for them
            files[file] = {"bytes": (staging / file).stat().st_size, "sha256": _sha256(staging / file)}
        manifest = json.dumps({"step": step, "files": files}, indent=2) + "\n"
        (staging / MANIFEST).write_text(manifest, encoding="utf-8")
        _fsync(staging / MANIFEST)
        final = root / name
        if final.exists():  # the same step saved again (after a fallback): swap the old one out
            aside = root / f"{_REPLACED}{name}-{os.getpid()}"
            os.replace(final, aside)
            os.replace(staging, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, final)
        _fsync(root)
        atomic_write(
            root / LATEST,
            lambda tmp: Path(tmp).write_text(json.dumps({"checkpoint": name, "step": step}) + "\n", encoding="utf-8"),
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(run, final, keep)
    return final


def _write_failure(exc: BaseException, where: Path) -> str:
    """Why a write failed, in words: a full disk is named even when torch only says
    "unexpected pos" about its short write."""
    free = shutil.disk_usage(where).free
    if getattr(exc, "errno", None) == errno.ENOSPC or free < 1 << 20:
        return f"no space left on the device ({free:,} bytes free)"
    return describe_os_error(exc) if isinstance(exc, OSError) else str(exc).splitlines()[0]


def _set_step(entry: Path) -> int:
    """The step of a checkpoint set, from its directory name (step-N)."""
    match = _SET.fullmatch(entry.name)
    assert match is not None, entry  # sets are only ever named by publish_checkpoint
    return int(match.group(1))


def _prune(run: Path, current: Path, keep: int) -> None:
    """Remove sets beyond the newest `keep` (current included), sets newer than current (left by a
    run that fell back to an older set), and the older flat layout's files once a set exists."""
    step = _set_step(current)
    kept = 0
    for entry in checkpoint_sets(run):
        newer = _set_step(entry) > step
        if entry == current or (not newer and kept < keep):
            kept += 1
            continue
        shutil.rmtree(entry, ignore_errors=True)
    for name in (WEIGHTS, STATE_PT, STATE_JSON):
        (run / name).unlink(missing_ok=True)


def remove_stale_temporaries(run: str | Path) -> list[str]:
    """Delete what a killed process left half-written in a run: staging checkpoint sets and the
    temporary files of atomic writes. Call only while holding the run's lock (so no live writer
    owns them). Returns the names removed."""
    run = Path(run)
    removed = []
    patterns = (f"{CHECKPOINTS}/{_STAGING}*", f"{CHECKPOINTS}/{_REPLACED}*", f"{CHECKPOINTS}/.*.tmp", ".*.tmp")
    for pattern in (*patterns, f"{HISTORY}/.*.tmp"):
        for path in run.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(run)))
    return removed
