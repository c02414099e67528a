"""The training loop: batches -> loss -> gradients -> optimizer step, with evaluation, samples,
checkpoints, metrics, progress, and an exact resume; on one process or several (torchrun).

Randomness is kept in separate streams so a resumed run replays the same trajectory: the batch
order comes from the loader's own generator (saved in the checkpoint), dropout from torch's global
generator (saved), evaluation always uses the same fixed batches, and samples use a generator
seeded from the step, so neither evaluation nor sampling shifts the training stream.

Several processes: every rank runs this same loop on its own share of each global batch
(train/prefetch.py says which windows), gradients are averaged across ranks on the last
micro-step, and rank 0 alone prints and writes files. The global batch is
batch_size x grad_accum x world_size windows; a run resumed with another world size keeps that
global batch by changing grad_accum, so it continues the same trajectory.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptlab.config import RunConfig
from gptlab.data.loader import Dataset, batch_loader
from gptlab.data.units import bits_per
from gptlab.device import configure_backends
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json
from gptlab.inference.generate import complete
from gptlab.inference.pair_sample import pair_sample
from gptlab.locks import LOCK_FILE, lock_dataset_for_reading, lock_run
from gptlab.model import build_model
from gptlab.model.accounting import describe, flops_per_token
from gptlab.model.presets import PRESETS
from gptlab.outputs import check_output_dir
from gptlab.precision import autocast, precision_for
from gptlab.runs import CONFIG, TOKENIZER, is_run_dir, read_config, remove_stale_temporaries, weights_path
from gptlab.tokenizers import load_tokenizer
from gptlab.train import distributed, ramp
from gptlab.train.checkpoint import (
    TrainState,
    fallback_note,
    has_checkpoint,
    load_checkpoint,
    load_weights_for_resume,
    read_state,
    save_checkpoint,
    save_history,
)
from gptlab.train.distributed import Ranks, all_sum
from gptlab.train.guard import divergence_message, first_nonfinite
from gptlab.train.history import describe_history, history_enabled, is_kept
from gptlab.train.metrics import MetricsLog, Progress
from gptlab.train.optim import lr_at
from gptlab.train.perf import device_peak, mfu
from gptlab.train.prefetch import PrefetchingLoader
from gptlab.train.step import Objective, compile_by_default, make_runner
from gptlab.train.trackers import make_tracker


@dataclass
class TrainResult:
    """How a call to train() ended."""

    step: int
    interrupted: bool
    last_eval: dict[str, float]


class _InterruptFlag:
    """First Ctrl-C (or SIGTERM, which torchrun and schedulers send before killing) asks the loop to
    checkpoint and stop after the current step; a second Ctrl-C falls back to the default
    (immediate KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.set = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _InterruptFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.set = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module, dataset: Dataset, cfg: RunConfig, device: torch.device, ranks: Ranks | None = None
) -> dict[str, float]:
    """Mean loss over the same eval_batches fixed batches of each split (nats per token).

    With several ranks each evaluates every world_size-th batch and the sums are added up; every
    rank runs the same number of forward passes (padding with a repeated batch it does not count),
    which FSDP needs because each forward pass gathers parameters from all ranks.
    """
    model.eval()
    out = {}
    ranks = ranks or Ranks()  # one process unless told
    n, world = cfg.train.eval_batches, ranks.world_size
    for split in ("train", "val"):
        if not dataset.splits.get(split, {}).get("tokens"):
            continue
        # A fresh loader with a fixed seed: the same windows every evaluation, comparable over time.
        loader = batch_loader(
            dataset,
            split,
            cfg.train.eval_batch_size or cfg.train.batch_size,
            cfg.model.block_size,
            seed=cfg.train.seed + 1,
            arch=cfg.model.arch,
        )
        total, batch = 0.0, None
        for i in range(-(-n // world) * world):
            if i < n:
                batch = loader.next_batch()
            if i % world != ranks.rank:
                continue
            assert batch is not None  # drawn at i == 0 (eval_batches >= 1)
            on_device = batch.to(device)
            with autocast(device, cfg.train.precision):
                _, loss = model(on_device.inputs, on_device.loss_targets(), **on_device.model_inputs())
            if i < n:
                total += loss.item()
        out[split] = all_sum([total], ranks, device)[0] / n
    model.train()
    return out


def _resolve_config(
    cfg: RunConfig | None, run: Path, resume: bool, max_steps: int | None, command: str = "train"
) -> RunConfig:
    """The config to train with: cfg for a new run, the run's own when resuming; refuse bad targets."""
    if resume:
        if not has_checkpoint(run):
            raise GptlabError(f"{run} is not a resumable gptlab run (no checkpoint); train one first")
        cfg = read_config(run)
        if max_steps is not None:
            at = read_state(run).step
            if max_steps < at:  # would rewrite config.json with a target the run has passed
                raise GptlabError(
                    f"--max-steps {max_steps} is below the step {run} has reached ({at}); give at least {at}"
                )
            cfg.train.max_steps = max_steps
            cfg.validate()
        return cfg
    assert cfg is not None
    if has_checkpoint(run):
        raise GptlabError(
            f"{run} already holds a run; resume it with `gptlab {command} --resume {run}` or choose another --out"
        )
    return cfg


def _keep_global_batch(cfg: RunConfig, run: Path, ranks: Ranks) -> None:
    """On resume with another world size, set grad_accum so the global batch stays what it was."""
    saved = read_state(run)
    micro_batches = (saved.grad_accum or cfg.train.grad_accum) * saved.world_size
    if micro_batches % ranks.world_size:
        raise GptlabError(
            f"{run} trained with {micro_batches} micro-batches per step "
            f"({saved.world_size} process(es)); resume it with a number of processes "
            f"that divides {micro_batches}"
        )
    accum = micro_batches // ranks.world_size
    if accum != cfg.train.grad_accum and ranks.is_main:
        print(
            f"note: {ranks.world_size} process(es) now, {saved.world_size} before: grad_accum "
            f"{cfg.train.grad_accum} -> {accum} keeps the global batch"
        )
    cfg.train.grad_accum = accum


def train(
    cfg: RunConfig | None,
    run_dir: str | Path,
    resume: bool = False,
    max_steps: int | None = None,
    session: type[TrainingSession] | None = None,
) -> TrainResult:
    """Train a model into run_dir (a new run from cfg, or resume the run already there).

    The writer (rank 0) holds the run directory exclusively and the dataset shared (locks.py) for
    the whole session, and first clears what a killed writer left half-written. session: the kind
    of training, a TrainingSession (pretraining by default; posttrain/session.py for fine-tuning and
    alignment)."""
    run = Path(run_dir)
    writer = int(os.environ.get("RANK", "0")) == 0  # before setup: only rank 0 writes the run
    kind = session or TrainingSession
    if not resume and cfg is not None:  # before the lock creates anything (outputs.py: the one rule)
        reads = [
            ("--data", cfg.data if kind.reads_prepared_dataset else cfg.posttrain.data),
            ("--from", cfg.posttrain.base),
        ]
        check_output_dir(run, reads, "a gptlab run", is_run_dir)
    created = not run.exists()
    held = [lock_run(run, create=not resume)] if writer else []
    try:
        cfg = _resolve_config(cfg, run, resume, max_steps, kind.command)
        if writer:
            if kind.reads_prepared_dataset:
                held.append(lock_dataset_for_reading(cfg.data))
            remove_stale_temporaries(run)
        ranks, device = distributed.setup(cfg.train.device)
        try:
            if resume:
                _keep_global_batch(cfg, run, ranks)
            return kind(cfg, run, resume, ranks, device).loop()
        finally:
            distributed.shutdown()
    except BaseException:
        if writer and created and run.is_dir() and {p.name for p in run.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(run, ignore_errors=True)  # refused before writing anything: leave no empty run
        raise
    finally:
        for lock in held:
            lock.release()


class TrainingSession:
    """One training session: everything built, then loop() until max_steps or an interrupt.

    This class is pretraining. Another kind of training (fine-tuning and alignment in
    posttrain/session.py, and next RL) is a subclass that keeps the loop, its checkpoints, resume,
    metrics and progress, and overrides some of the HOOKS, which say what it trains on and how:

        data:       load_data (sets self.tokenizer and cfg.model.vocab_size), train_loader,
                    write_data_description (rank 0), check_dataset
        weights:    start_weights (a new run's weights; a resume loads its checkpoint instead)
        objective:  objective (what each micro-step minimises), evaluate_and_sample, step_figures
        kind:       command (the command that resumes such a run), reads_prepared_dataset

    They run in this order: load_data (no model yet), start_weights (self.model built), objective,
    train_loader, write_data_description; then, in the loop, evaluate_and_sample and check_dataset
    (with self.state and, on rank 0, self.metrics). Every hook may read cfg, tcfg (cfg.train), run,
    resume, ranks, device and main (rank 0); say() prints on rank 0.
    """

    HOOKS = (
        "load_data",
        "start_weights",
        "objective",
        "train_loader",
        "write_data_description",
        "evaluate_and_sample",
        "check_dataset",
        "step_figures",
    )

    def __init__(self, cfg: RunConfig, run: Path, resume: bool, ranks: Ranks, device: torch.device):
        self.cfg, self.run, self.resume, self.ranks, self.device = cfg, run, resume, ranks, device
        tcfg = self.tcfg = cfg.train
        self.main = ranks.is_main
        self.load_data()
        configure_backends(device)

        torch.manual_seed(tcfg.seed)
        self.model = build_model(cfg.model).to(device)
        weights_step = load_weights_for_resume(run, self.model) if resume else self.start_weights()
        if resume and tcfg.precision == "auto" and device.type == "cpu":
            # A CPU run records the precision it measured; one that says auto was written before
            # precision existed (or on a GPU), when a CPU computed in fp32: it goes on so, measuring nothing.
            tcfg.precision = "fp32"
        if resume and tcfg.muon_precision == "auto" and device.type == "cpu":
            # Likewise Muon's: before the field, it iterated in the run's precision (now resolved above).
            tcfg.muon_precision = tcfg.precision
        self.runner = make_runner(self.model, tcfg, ranks, device, self.objective())
        self.loader = PrefetchingLoader(
            self.train_loader(), ranks.rank, ranks.world_size, pin_memory=device.type == "cuda", shapes=self._shapes()
        )

        if resume:
            self.state = load_checkpoint(run, self.model, self.runner.optimizer, weights_step, self.runner.scaler)
            self.loader.load_state_dict(self.state.loader, micro_step=self.state.step * tcfg.grad_accum)
            for line in filter(None, [fallback_note(run), f"resuming {run} at step {self.state.step}"]):
                self.say(line)
            self.saved_step = self.state.step
        else:
            if self.main:
                run.mkdir(parents=True, exist_ok=True)
            self.state = TrainState()
            self.saved_step = -1  # no checkpoint yet
        self.state.world_size, self.state.grad_accum = ranks.world_size, tcfg.grad_accum
        if ranks.rank > 0:
            # Other ranks draw their own dropout masks (rank 0 keeps the saved stream, so a
            # one-process run resumes exactly).
            torch.manual_seed(tcfg.seed + 1_000_003 * ranks.rank + self.state.step)
        if self.main:
            atomic_write_json(run / CONFIG, cfg.to_dict())
            if not resume:
                self.tokenizer.save(run / TOKENIZER)
            self.write_data_description()
        self.micro_batches = tcfg.grad_accum * ranks.world_size  # per optimizer step, over all ranks
        self.tokens_per_step = tcfg.batch_size * self.micro_batches * cfg.model.block_size  # at the full shape
        self.flops_per_token = flops_per_token(cfg.model)["train"]
        self.keeps_history = history_enabled(cfg)
        self.peak = device_peak(device) if self.main else None
        self._announce()
        self.metrics = (
            MetricsLog(
                run / "metrics.jsonl",
                resume_step=self.state.step if resume else None,
                tracker=make_tracker(tcfg.logger, run, cfg.to_dict()),
            )
            if self.main
            else None
        )
        self.progress = Progress(self.state.step, tcfg.max_steps, tcfg.log_interval) if self.main else None

    # --- the hooks: what pretraining does; other sessions (posttrain/session.py) override these ---

    command = "train"  # the command that resumes this kind of run
    reads_prepared_dataset = True  # held shared (locks.py) while training

    def load_data(self) -> None:
        """Open the prepared dataset and take its tokenizer (and vocab_size) for the model."""
        cfg, run = self.cfg, self.run
        self.dataset = Dataset(cfg.data)
        self.tokenizer = self.dataset.tokenizer
        if self.resume and load_tokenizer(run / TOKENIZER).to_dict() != self.tokenizer.to_dict():
            # Same vocabulary size, different ids: the weights would silently learn a new mapping.
            raise GptlabError(
                f"the dataset {cfg.data} was prepared with another tokenizer than the run {run} "
                "was trained with; resume on the dataset the run started with"
            )
        if cfg.model.vocab_size not in (0, self.tokenizer.vocab_size) and not self.resume:
            self.say(
                f"note: vocab_size set to the tokenizer's {self.tokenizer.vocab_size} (was {cfg.model.vocab_size})"
            )
        cfg.model.vocab_size = self.tokenizer.vocab_size
        if self.tcfg.sample_tokens and self.dataset.kind == "text":  # pairs sample a held-out source instead
            self._check_sample_prompt()
        if self.dataset.splits["val"]["tokens"]:  # a val split, where there is one, must fit a window too
            batch_loader(self.dataset, "val", self.tcfg.batch_size, cfg.model.block_size, seed=0, arch=cfg.model.arch)

    def _check_sample_prompt(self) -> None:
        """Refuse a sample prompt the tokenizer cannot encode before any work, unless it is the
        preset's own (the English "ROMEO:" on a Chinese corpus): a newcomer's first command must
        work, so the prompt then becomes the start of the dataset's text, and the run says so."""
        tcfg = self.tcfg
        try:
            self.tokenizer.encode(tcfg.sample_prompt)
            return
        except GptlabError:
            preset = PRESETS.get(self.cfg.preset, {}).get("train", {}).get("sample_prompt")
            if self.resume or tcfg.sample_prompt != preset:
                raise
        start: list[int] = next((s[:16].tolist() for s in self.dataset.shards("train") if len(s)), [])
        fallback = self.tokenizer.decode(start)[:1]
        try:
            self.tokenizer.encode(fallback)
        except GptlabError:
            fallback = ""  # an empty prompt starts from a document boundary
        self.say(
            f"note: the preset's sample prompt {tcfg.sample_prompt!r} is not in this tokenizer's vocabulary; "
            f"samples start from {fallback!r}, the dataset's first character (sample_prompt=TEXT chooses another)"
        )
        tcfg.sample_prompt = fallback

    def start_weights(self) -> int:
        """Weights of a new run: pretraining keeps the fresh initialisation. Returns their step."""
        return 0

    def objective(self) -> Objective | None:
        """What each micro-step minimises (None: the language-model loss)."""
        return None

    def train_loader(self) -> Any:
        """The loader of training batches (state_dict/load_state_dict for an exact resume)."""
        if ramp.ramp_on(self.tcfg) and self.dataset.kind != "text":
            raise GptlabError(
                f"seq_len_start and batch_size_start draw windows of text; {self.cfg.data} is a dataset of "
                f"{self.dataset.kind}: set both to 0"
            )
        return batch_loader(
            self.dataset,
            "train",
            self.tcfg.batch_size,
            self.cfg.model.block_size,
            seed=self.tcfg.seed,
            arch=self.cfg.model.arch,
        )

    def _shapes(self) -> Any:
        """The shape of each micro-step's batches under a shape schedule (train/ramp.py), else None."""
        tcfg, block_size = self.tcfg, self.cfg.model.block_size
        if not ramp.ramp_on(tcfg):
            return None
        return lambda micro_step: ramp.shape_at(micro_step // tcfg.grad_accum, tcfg, block_size)

    def step_tokens(self, step: int) -> int:
        """Tokens trained on at step (counted from 0) over all ranks: fewer while a shape schedule grows."""
        return ramp.step_tokens(step, self.tcfg, self.cfg.model.block_size, self.micro_batches)

    def write_data_description(self) -> None:
        """Record in the run what data it trained on (rank 0)."""
        atomic_write_json(self.run / "data_meta.json", self.dataset.meta)

    def say(self, text: str) -> None:
        """Print on rank 0 only (through the progress bar once there is one)."""
        if not self.main:
            return
        progress = getattr(self, "progress", None)  # none until __init__ has made it
        if progress is not None:
            progress.write(text)
        else:
            print(text, flush=True)

    def _announce(self) -> None:
        for line in describe(self.cfg.model):
            self.say(line)
        t, w = self.tcfg, self.ranks.world_size
        precision = self.runner.precision
        how = f"{precision_for(self.device, precision.name).name}, {precision.how}"
        muon = self.runner.muon_precision
        if muon is not None:
            how += f"; Muon's orthogonalisation {muon.name}, {muon.how}"
        how += ", compiled" if compile_by_default(t.compile, self.device) else ""
        if w > 1:
            how += f", {w} processes, {'FSDP' if t.fsdp else 'DDP'}"
        self.say(f"optimizer {t.optimizer} ({self.runner.optimizer.describe()}), {t.schedule} schedule")
        self.say(
            f"training on {self.device} ({how}) for {t.max_steps} steps, {self.tokens_per_step:,} tokens per "
            f"step (global batch {t.batch_size * t.grad_accum * w} = B={t.batch_size} x accum {t.grad_accum}"
            f" x {w} process(es), T={self.cfg.model.block_size})"
        )
        shape_schedule = ramp.describe_ramp(t, self.cfg.model.block_size)
        if shape_schedule:
            self.say(shape_schedule)
        if self.peak:
            self.say(
                f"peak: {self.peak.describe()} per process; {self.flops_per_token / 1e6:,.2f} MFLOP per token trained"
            )
        if self.keeps_history:
            self.say(describe_history(self.cfg, self.run))

    def evaluate_and_sample(self, step: int) -> dict[str, float]:
        """Losses on both splits and a sample (all ranks compute; rank 0 prints and writes)."""
        tcfg, state = self.tcfg, self.state
        losses = estimate_loss(self.model, self.dataset, self.cfg, self.device, self.ranks)
        self.check_dataset()
        record: dict[str, Any] = {
            "step": step,
            "tokens_seen": state.tokens_seen,
            "elapsed_s": round(state.elapsed_s, 3),
        }
        text = f"step {step}: train loss {losses['train']:.4f}"
        record["eval_train_loss"] = losses["train"]
        if "val" in losses:
            record["val_loss"] = losses["val"]
            record["val_bpc"] = bits_per(losses["val"], self.dataset.splits["val"], "chars")
            text += f", val loss {losses['val']:.4f} ({record['val_bpc']:.3f} bits/char)"
        self.say(text)
        if tcfg.sample_tokens:
            # Every rank samples the same text: under FSDP each forward pass needs all of them.
            if self.dataset.kind == "pairs":
                prompt, sample = pair_sample(self.model, self.dataset, tcfg, step)
            else:
                prompt = tcfg.sample_prompt
                sample = "".join(
                    complete(
                        self.model,
                        self.tokenizer,
                        prompt,
                        tcfg.sample_tokens,
                        tcfg.sample_temperature,
                        tcfg.sample_top_k,
                        seed=tcfg.seed + step,
                    )
                )
            self.model.train()
            self.say(f"--- sample at step {step} ---\n{prompt}{sample}\n---")
            if self.main:
                with open(self.run / "samples.txt", "a", encoding="utf-8") as f:
                    f.write(f"=== step {step} ===\n{prompt}{sample}\n\n")
        if self.metrics is not None:  # rank 0
            self.metrics.write(record)
        return losses

    def check_dataset(self) -> None:
        """Stop with one line when the dataset was replaced under the run (all ranks together)."""
        if all_sum([float(self.main and self.dataset.replaced())], self.ranks, self.device)[0] > 0:
            kept = f"step {self.saved_step}" if self.saved_step >= 0 else "none yet"
            raise GptlabError(
                f"the dataset {self.cfg.data} was replaced while this run was training on it "
                f"(its meta.json changed); stopped at step {self.state.step} (last checkpoint: "
                f"{kept}); prepare new data into another directory"
            )

    def checkpoint(self) -> None:
        """Save everything a resume needs (every rank calls: FSDP gathers shards), never from
        non-finite weights or optimizer state (train/guard.py)."""
        self.state.loader = self.loader.state_dict()
        if self.state.step == self.saved_step:
            return  # an interrupt right after a checkpoint: that set already holds this step
        bad = first_nonfinite(self.model, self.runner.optimizer)
        if all_sum([float(bad is not None)], self.ranks, self.device)[0] > 0:  # every rank stops together
            event = f"{bad or 'a weight on another rank'} became NaN or infinite after the update"
            raise GptlabError(
                divergence_message(
                    event, self.state.step, self.run, self.saved_step, lr_at(self.state.step - 1, self.tcfg)
                )
            )
        save_checkpoint(
            self.run,
            self.model,
            self.runner.optimizer,
            self.state,
            self.runner.scaler,
            sharded=self.tcfg.fsdp,
            is_main=self.main,
            keep=self.tcfg.keep_checkpoints,
        )
        self.saved_step = self.state.step
        if self.main:
            from gptlab.report.plot import refresh_loss_plot  # matplotlib loads only once a plot is due

            refresh_loss_plot(self.run)  # RUN/loss.png follows the checkpoints; a plotting error only warns

    def keep_weights(self, step: int) -> None:
        """Keep the weights after `step` steps in the run's history when the series has that step (every
        rank calls: FSDP gathers)."""
        if self.keeps_history and is_kept(step, self.tcfg.max_steps):
            save_history(self.run, self.model, step, sharded=self.tcfg.fsdp, is_main=self.main)

    def step_figures(self) -> dict[str, float]:
        """More figures for the metrics record and progress line of a step (RL: reward, KL, length)."""
        return {}

    def log(self, step: int, train_loss: float, lr: float, tokens_per_sec: float) -> None:
        """One metrics record and progress line, with model FLOP/s and MFU when the peak is known."""
        record = {
            "step": step,
            "train_loss": train_loss,
            "lr": lr,
            "tokens_per_sec": tokens_per_sec,
            "tokens_seen": self.state.tokens_seen,
            "elapsed_s": round(self.state.elapsed_s, 3),
        }
        figures = self.step_figures()
        record.update(figures)
        extra = "".join(f" | {k.replace('_', ' ')} {v:.3g}" for k, v in figures.items())
        if self.peak:
            self.peak.refine(tokens_per_sec * self.flops_per_token / self.ranks.world_size)
            record["mfu"] = mfu(tokens_per_sec, self.flops_per_token, self.peak.flops * self.ranks.world_size)
            extra += f" | {tokens_per_sec * self.flops_per_token / 1e9:,.1f} GFLOP/s, MFU {record['mfu']:.1%}"
        assert self.metrics is not None and self.progress is not None  # log runs on rank 0 only
        self.metrics.write(record)
        left = ramp.tokens_between(step, self.tcfg.max_steps, self.tcfg, self.cfg.model.block_size, self.micro_batches)
        eta = left / max(tokens_per_sec, 1e-9)
        self.progress.update(step, train_loss, tokens_per_sec, eta, extra)

    def loop(self) -> TrainResult:
        """Train until max_steps or an interrupt; checkpoint; report."""
        tcfg, state = self.tcfg, self.state
        last_eval: dict[str, float] = {}
        interrupted = False
        try:
            with _InterruptFlag() as interrupt:
                if state.step == 0 and not self.resume:
                    self.keep_weights(0)
                    last_eval = self.evaluate_and_sample(0)
                window_start, window_tokens = time.perf_counter(), 0
                stop = False
                while state.step < tcfg.max_steps and not stop:
                    t0 = time.perf_counter()
                    lr = lr_at(state.step, tcfg)
                    loss = self.runner.step(self.loader.next_batch, lr / tcfg.lr)
                    # One exchange per step: the mean loss over ranks, and whether any rank was
                    # interrupted (all must stop at the same step, or the next collective hangs).
                    loss_sum, stops = all_sum([loss.item(), float(interrupt.set)], self.ranks, self.device)
                    train_loss, stop = loss_sum / self.ranks.world_size, stops > 0
                    if not math.isfinite(train_loss):
                        raise GptlabError(
                            divergence_message(
                                f"the loss became {train_loss}", state.step + 1, self.run, self.saved_step, lr
                            )
                        )
                    tokens = self.step_tokens(state.step)
                    state.step += 1
                    state.tokens_seen += tokens
                    state.elapsed_s += time.perf_counter() - t0
                    window_tokens += tokens
                    step, is_last = state.step, state.step == tcfg.max_steps
                    self.keep_weights(step)
                    if self.main and (step % tcfg.log_interval == 0 or is_last):
                        now = time.perf_counter()
                        self.log(step, train_loss, lr, window_tokens / max(1e-9, now - window_start))
                        # Logging (and a peak re-timing there) is not training throughput.
                        window_start, window_tokens = time.perf_counter(), 0
                    if step % tcfg.eval_interval == 0 or is_last:
                        last_eval = self.evaluate_and_sample(step)
                        window_start = time.perf_counter()  # evaluation time is not training throughput
                    if step % tcfg.checkpoint_interval == 0 or is_last:
                        self.checkpoint()
                interrupted = stop and state.step < tcfg.max_steps
                if interrupted:
                    self.checkpoint()
        finally:
            self.loader.close()
            if self.progress is not None:  # rank 0
                self.progress.close()
            if self.metrics is not None:
                self.metrics.close()
        if interrupted:
            self.say(
                f"interrupted: checkpoint saved at step {state.step}; continue with "
                f"`gptlab {self.command} --resume {self.run}`"
            )
        else:
            self.say(f"done: {state.step} steps in {state.elapsed_s:.1f}s; weights in {weights_path(self.run)}")
        return TrainResult(state.step, interrupted, last_eval)
