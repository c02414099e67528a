"""The training loop: batches -> loss -> gradients -> optimizer step, with evaluation, samples,
checkpoints, metrics, progress, and an exact resume.

Randomness is kept in separate streams so a resumed run replays the same trajectory: the batch
order comes from the loader's own generator (saved in the checkpoint), dropout from torch's global
generator (saved), evaluation always uses the same fixed batches, and samples use a generator
seeded from the step, so neither evaluation nor sampling shifts the training stream.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptlab.config import RunConfig
from gptlab.data.loader import BatchLoader, Dataset
from gptlab.device import autocast, pick_device
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json
from gptlab.inference.generate import complete
from gptlab.model.accounting import describe
from gptlab.model.gpt import GPT
from gptlab.report.plot import refresh_loss_plot
from gptlab.runs import CONFIG, TOKENIZER, read_config
from gptlab.train.checkpoint import TrainState, has_checkpoint, load_checkpoint, save_checkpoint
from gptlab.train.metrics import MetricsLog, Progress
from gptlab.train.optim import build_optimizer, lr_at

LN2 = math.log(2)


@dataclass
class TrainResult:
    """How a call to train() ended."""

    step: int
    interrupted: bool
    last_eval: dict[str, float]


class _InterruptFlag:
    """First Ctrl-C asks the loop to checkpoint and stop after the current step; a second one
    falls back to the default (immediate KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None

    def __enter__(self) -> "_InterruptFlag":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.set = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGINT, self._previous)


@torch.no_grad()
def estimate_loss(model: GPT, dataset: Dataset, cfg: RunConfig, device: torch.device) -> dict[str, float]:
    """Mean loss over the same eval_batches fixed batches of each split (nats per token)."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        if not dataset.splits.get(split, {}).get("tokens"):
            continue
        # A fresh loader with a fixed seed: the same windows every evaluation, comparable over time.
        loader = BatchLoader(dataset, split, cfg.train.batch_size, cfg.model.block_size, seed=cfg.train.seed + 1)
        losses = []
        for _ in range(cfg.train.eval_batches):
            x, y = loader.next_batch()
            with autocast(device):
                _, loss = model(x.to(device), y.to(device))
            losses.append(loss.item())
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


def train(cfg: RunConfig | None, run_dir: str | Path, resume: bool = False,
          max_steps: int | None = None) -> TrainResult:
    """Train a model into run_dir (a new run from cfg, or resume the run already there)."""
    run = Path(run_dir)
    if resume:
        if not has_checkpoint(run):
            raise GptlabError(f"{run} is not a resumable gptlab run (no checkpoint); train one first")
        cfg = read_config(run)
        if max_steps is not None:
            cfg.train.max_steps = max_steps
            cfg.validate()
    else:
        assert cfg is not None
        if has_checkpoint(run):
            raise GptlabError(f"{run} already holds a run; resume it with `gptlab train --resume {run}` "
                              "or choose another --out")
        if run.exists() and not run.is_dir():
            raise GptlabError(f"--out {run} exists and is not a directory")

    dataset = Dataset(cfg.data)
    tokenizer = dataset.tokenizer
    if cfg.model.vocab_size not in (0, tokenizer.vocab_size) and not resume:
        print(f"note: vocab_size set to the tokenizer's {tokenizer.vocab_size} (was {cfg.model.vocab_size})")
    cfg.model.vocab_size = tokenizer.vocab_size
    if cfg.train.sample_tokens:
        tokenizer.encode(cfg.train.sample_prompt)  # refuse an unencodable prompt before any work
    device = pick_device(cfg.train.device)
    tcfg = cfg.train

    torch.manual_seed(tcfg.seed)
    model = GPT(cfg.model).to(device)
    optimizer = build_optimizer(model, tcfg)
    loader = BatchLoader(dataset, "train", tcfg.batch_size, cfg.model.block_size, seed=tcfg.seed)
    BatchLoader(dataset, "val", tcfg.batch_size, cfg.model.block_size, seed=0)  # val must fit a window too

    if resume:
        state = load_checkpoint(run, model, optimizer)
        loader.load_state_dict(state.loader)
        print(f"resuming {run} at step {state.step}")
    else:
        run.mkdir(parents=True, exist_ok=True)
        state = TrainState()
    atomic_write_json(run / CONFIG, cfg.to_dict())
    tokenizer.save(run / TOKENIZER)
    atomic_write_json(run / "data_meta.json", dataset.meta)
    for line in describe(cfg.model):
        print(line)
    tokens_per_step = tcfg.batch_size * tcfg.grad_accum * cfg.model.block_size
    print(f"training on {device} for {tcfg.max_steps} steps, {tokens_per_step:,} tokens per step "
          f"(B={tcfg.batch_size} x accum {tcfg.grad_accum} x T={cfg.model.block_size})")

    metrics = MetricsLog(run / "metrics.jsonl", resume_step=state.step if resume else None)
    progress = Progress(state.step, tcfg.max_steps, tcfg.log_interval)
    last_eval: dict[str, float] = {}
    chars_per_token = dataset.chars_per_token("val" if dataset.splits["val"]["tokens"] else "train")

    def evaluate_and_sample(step: int) -> dict[str, float]:
        losses = estimate_loss(model, dataset, cfg, device)
        record: dict[str, Any] = {"step": step, "tokens_seen": state.tokens_seen, "elapsed_s": round(state.elapsed_s, 3)}
        text = f"step {step}: train loss {losses['train']:.4f}"
        record["eval_train_loss"] = losses["train"]
        if "val" in losses:
            record["val_loss"] = losses["val"]
            record["val_bpc"] = losses["val"] / LN2 / chars_per_token
            text += f", val loss {losses['val']:.4f} ({record['val_bpc']:.3f} bits/char)"
        progress.write(text)
        if tcfg.sample_tokens:
            sample = "".join(complete(model, tokenizer, tcfg.sample_prompt, tcfg.sample_tokens,
                                      tcfg.sample_temperature, tcfg.sample_top_k, seed=tcfg.seed + step))
            model.train()
            progress.write(f"--- sample at step {step} ---\n{tcfg.sample_prompt}{sample}\n---")
            with open(run / "samples.txt", "a", encoding="utf-8") as f:
                f.write(f"=== step {step} ===\n{tcfg.sample_prompt}{sample}\n\n")
        metrics.write(record)
        return losses

    def checkpoint() -> None:
        state.loader = loader.state_dict()
        save_checkpoint(run, model, optimizer, state)
        refresh_loss_plot(run)  # RUN/loss.png follows the checkpoints; a plotting error only warns

    model.train()
    interrupted = False
    try:
        with _InterruptFlag() as interrupt:
            if state.step == 0 and not resume:
                last_eval = evaluate_and_sample(0)
            window_start, window_tokens = time.perf_counter(), 0
            while state.step < tcfg.max_steps and not interrupt.set:
                t0 = time.perf_counter()
                lr = lr_at(state.step, tcfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = 0.0
                for _ in range(tcfg.grad_accum):
                    x, y = loader.next_batch()
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with autocast(device):
                        _, loss = model(x, y)
                    (loss / tcfg.grad_accum).backward()
                    loss_sum += loss.item()
                train_loss = loss_sum / tcfg.grad_accum
                if not math.isfinite(train_loss):
                    raise GptlabError(f"loss became {train_loss} at step {state.step + 1} (try a lower lr); "
                                      f"the last checkpoint in {run} is kept")
                if tcfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.tokens_seen += tokens_per_step
                dt = time.perf_counter() - t0
                state.elapsed_s += dt
                window_tokens += tokens_per_step
                step = state.step
                is_last = step == tcfg.max_steps
                if step % tcfg.log_interval == 0 or is_last:
                    now = time.perf_counter()
                    tps = window_tokens / max(1e-9, now - window_start)
                    window_start, window_tokens = now, 0
                    metrics.write({"step": step, "train_loss": train_loss, "lr": lr, "tokens_per_sec": tps,
                                   "tokens_seen": state.tokens_seen, "elapsed_s": round(state.elapsed_s, 3)})
                    progress.update(step, train_loss, tps, (tcfg.max_steps - step) * tokens_per_step / max(tps, 1e-9))
                if step % tcfg.eval_interval == 0 or is_last:
                    last_eval = evaluate_and_sample(step)
                    window_start = time.perf_counter()  # evaluation time is not training throughput
                if step % tcfg.checkpoint_interval == 0 or is_last:
                    checkpoint()
            interrupted = interrupt.set and state.step < tcfg.max_steps
            if interrupted:
                checkpoint()
    finally:
        progress.close()
        metrics.close()
    if interrupted:
        print(f"interrupted: checkpoint saved at step {state.step}; continue with `gptlab train --resume {run}`")
    else:
        print(f"done: {state.step} steps in {state.elapsed_s:.1f}s; weights in {run / 'model.safetensors'}")
    return TrainResult(state.step, interrupted, last_eval)
