"""One training step, shown number by number: the lesson behind `gptlab step` and the page's "Train on this".

A Lesson is a private copy of a run's model and optimizer state, read from the run's current checkpoint and
never written back. It takes the trainer's own steps (train/step.py's StepRunner, the run's optimizer by
role from train/optim.py, the trainer's learning-rate rule) on one window of text, and reports what they did:

    before   for every position: the target token, its probability, the top alternatives, the loss
    step     the loss it trained on, the gradient's norm by layer and by role, the update's size by role
    after    the same table again, so each target's change in probability shows

Repeated steps on the same window memorise it (its loss falls toward 0); reset() goes back to the run's
weights and optimizer state. The copy keeps its own dropout random stream (the checkpoint's), so its steps
neither disturb nor depend on other users of torch's global CPU generator (a CUDA model's dropout draws from
the device's own), and on a CPU one step from a checkpoint is bit for bit the step `gptlab train --resume`
takes next on the same batch.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from gptlab.config import RunConfig
from gptlab.data.batch import Batch
from gptlab.data.loader import Dataset, batch_loader
from gptlab.errors import GptlabError
from gptlab.model import build_model
from gptlab.precision import autocast
from gptlab.runs import TOKENIZER, load_weights, read_config, weights_path
from gptlab.tokenizers import Tokenizer, load_tokenizer
from gptlab.train.checkpoint import has_checkpoint, load_checkpoint, load_weights_for_resume
from gptlab.train.distributed import Ranks
from gptlab.train.optim import lr_at
from gptlab.train.step import StepRunner, make_runner

MAX_STEPS = 100  # steps per call: enough to memorise a window, short enough to answer in seconds
MAX_LR = 10.0  # above this every optimizer here diverges at once
TOP = 5  # alternatives shown per position


def layer_of(name: str) -> str:
    """Where a parameter sits on the data's path: "embedding", "block N", "final norm", "head" (an
    encoder–decoder's "encoder block N" ...): the rows of the gradient-norm table."""
    parts = name.split(".")
    if parts[0] in ("blocks", "encoder", "decoder") and len(parts) > 1 and parts[1].isdigit():
        return ("block " if parts[0] == "blocks" else f"{parts[0]} block ") + parts[1]
    if parts[0].startswith(("wte", "wpe")):
        return "embedding"
    if parts[0].startswith("ln"):
        return "final norm"
    if parts[0] == "lm_head":
        return "head"
    return parts[0]


def _norms(squares: dict[str, float]) -> dict[str, float]:
    return {key: math.sqrt(value) for key, value in squares.items()}


class Lesson:
    """A run's model and optimizer, copied from its current checkpoint, trained on one window at a time.

    run: the run directory (only read). device: where the copy lives (the served model's device, or the
    run's own for the command).
    """

    def __init__(self, run: str | Path, device: torch.device):
        self.run, self.device = Path(run), device
        cfg: RunConfig = read_config(self.run)
        if cfg.model.arch != "gpt":
            raise GptlabError(
                f"{self.run} is an encoder–decoder: a lesson trains a decoder-only model on a window of text"
            )
        self.cfg = cfg
        self.tokenizer: Tokenizer = load_tokenizer(self.run / TOKENIZER)
        # The trainer's step on one device, eagerly: compiling would cost a server seconds before the first step.
        self.tcfg = replace(cfg.train, compile="off", fsdp=False, grad_accum=1)
        with torch.random.fork_rng(devices=[]):  # building draws an initialisation: leave the global stream alone
            model = build_model(cfg.model)
            if has_checkpoint(self.run):
                self.run_step = load_weights_for_resume(self.run, model)
                model.to(device)
                self.runner: StepRunner = make_runner(model, self.tcfg, Ranks(), device)
                state = load_checkpoint(self.run, model, self.runner.optimizer, self.run_step)
                self.run_step = state.step
                self.note = ""
            else:  # imported or older weights without optimizer state: the optimizer starts fresh
                self.run_step = load_weights(model, weights_path(self.run))
                model.to(device)
                self.runner = make_runner(model, self.tcfg, Ranks(), device)
                self.note = "the run keeps no optimizer state: the optimizer starts fresh"
            self._rng = torch.get_rng_state()  # the checkpoint's dropout stream (load_checkpoint set it)
        self.model = model
        self.roles = {name: role for name, (role, _) in model.parameter_roles().items()}
        self._saved = (
            {k: v.detach().clone() for k, v in model.state_dict().items()},
            copy.deepcopy(self.runner.optimizer.state_dict()),
            self._rng.clone(),
        )
        self.trained_steps = 0
        self._windows: Any = None  # the validation loader, opened on first use

    # --- windows ---

    def window_of_text(self, text: str) -> list[int]:
        """The ids of text as one window: the last block_size + 1 tokens (block_size inputs, each with the
        next token as its target), as the page shows the last block_size of a prompt."""
        if not text:
            raise GptlabError("the text is empty: give at least two tokens (an input and its next token)")
        ids = self.tokenizer.encode(text)
        if len(ids) < 2:
            raise GptlabError(f"the text is {len(ids)} token: give at least two (an input and its next token)")
        return ids[-(self.cfg.model.block_size + 1) :]

    def random_window(self) -> list[int]:
        """A random window of the run's validation data (its training data when it has none), drawn as the
        trainer draws its batches, each call the next window of the lesson's own stream."""
        if self._windows is None:
            try:
                dataset = Dataset(self.cfg.data)
            except GptlabError as exc:
                raise GptlabError(f"no text given and the run's data cannot be read ({exc}); give a text") from None
            split = "val" if dataset.splits.get("val", {}).get("tokens") else "train"
            self._windows = batch_loader(dataset, split, 1, self.cfg.model.block_size, seed=self.tcfg.seed + 2)
        batch = self._windows.next_batch()
        return batch.inputs[0].tolist() + batch.targets[0, -1:].tolist()

    # --- steps ---

    def default_lr(self) -> float:
        """The rate the trainer's next step would take (lr_at at the run's step plus the lesson's); a run
        whose schedule has ended (decayed to min_lr, or to 0 under wsd) takes its peak lr, or no step would
        show anything."""
        step = self.run_step + self.trained_steps
        return lr_at(step, self.tcfg) if step < self.tcfg.max_steps else self.tcfg.lr

    def step_batch(self, batch: Batch, lr: float) -> tuple[float, dict[str, float], dict[str, float], dict[str, float]]:
        """One optimizer step exactly as the trainer takes it, at lr for the hidden matrices (other roles
        keep their ratio). Returns the loss it trained on, the gradient's norm by layer and by role (before
        clipping), and the update's norm by role."""
        grad_sq: dict[str, torch.Tensor] = {}  # kept on the device: one wait at the end, not one per tensor
        params = dict(self.model.named_parameters())

        def record(name: str):
            def hook(p: torch.Tensor) -> None:
                if p.grad is not None:
                    grad_sq[name] = p.grad.detach().float().pow(2).sum()

            return hook

        handles = [p.register_post_accumulate_grad_hook(record(n)) for n, p in params.items() if p.requires_grad]
        before = {n: p.detach().clone() for n, p in params.items()}
        scale = self.runner.scaler.get_scale() if self.runner.scaler else 1.0  # float16 scales the gradients
        self.model.train()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self._rng)
                loss = self.runner.step(lambda: batch, lr / self.tcfg.lr)
                self._rng = torch.get_rng_state()
        finally:
            for handle in handles:
                handle.remove()
        self.trained_steps += 1
        by_layer: dict[str, float] = {}
        by_role: dict[str, float] = {}
        update: dict[str, float] = {}
        for name, p in params.items():  # in the model's order: along the data's path, embedding first
            role, layer = self.roles[name], layer_of(name)
            sq = float(grad_sq[name]) / scale**2 if name in grad_sq else 0.0
            by_layer[layer] = by_layer.get(layer, 0.0) + sq
            by_role[role] = by_role.get(role, 0.0) + sq
            update[role] = update.get(role, 0.0) + float((p.detach() - before[name]).float().pow(2).sum())
        return float(loss), _norms(by_layer), _norms(by_role), _norms(update)

    @torch.no_grad()
    def table(self, ids: list[int]) -> list[dict[str, Any]]:
        """For every position of the window: its target, the target's probability and loss, the top
        alternatives (dropout off, as the model is used)."""
        self.model.eval()
        x = torch.tensor([ids[:-1]], device=self.device)
        with autocast(self.device):
            logits, _ = self.model(x)
        logp = F.log_softmax(logits[0].float(), dim=-1)
        targets = torch.tensor(ids[1:], device=logp.device)
        target_logp = logp.gather(1, targets[:, None])[:, 0]
        top_logp, top_ids = torch.topk(logp, min(TOP, logp.size(-1)), dim=-1)
        # One copy to Python per tensor, not one per number: a window has up to block_size positions.
        # (exp in float32 for the target as for the top: the target's probability equals its entry in the top)
        rows = zip(ids[1:], target_logp.exp().tolist(), target_logp.tolist(), top_logp.exp().tolist(), top_ids.tolist())
        return [
            {
                "target": target,
                "p": p,
                "loss": -lp,
                "top": [{"id": j, "piece": self.tokenizer.id_to_piece(j), "prob": q} for q, j in zip(probs, choices)],
            }
            for target, p, lp, probs, choices in rows
        ]

    def train(self, ids: list[int], steps: int = 1, lr: float | None = None) -> dict[str, Any]:
        """steps trainer steps on the window ids, with the table before the first and after the last: the
        report `gptlab step --json` prints and /api/train-step answers. lr: the hidden matrices' rate for
        every step; None: each step the schedule's (default_lr), and the report's lr is the first step's."""
        if not 1 <= steps <= MAX_STEPS:
            raise GptlabError(f"steps={steps} must be in 1..{MAX_STEPS}")
        if lr is not None and not (math.isfinite(lr) and 0 < lr <= MAX_LR):
            raise GptlabError(f"lr={lr} must be a number in (0, {MAX_LR:g}]")
        data = torch.tensor([ids], device=self.device)
        batch = Batch(data[:, :-1], data[:, 1:])
        before = self.table(ids)
        losses: list[float] = []
        first_lr = lr if lr is not None else self.default_lr()
        started = time.perf_counter()
        for _ in range(steps):
            # No rate given: each step takes the schedule's, as the trainer's steps do.
            loss, grad_by_layer, grad_by_role, update_by_role = self.step_batch(
                batch, lr if lr is not None else self.default_lr()
            )
            if not math.isfinite(loss):
                raise GptlabError(f"the loss became {loss}; reset and take a smaller lr")
            losses.append(loss)
        step_ms = (time.perf_counter() - started) * 1000
        after = self.table(ids)
        broken = [a["loss"] for a in after if not math.isfinite(a["loss"])]
        if broken:  # the last update broke the weights (and NaN or infinity has no JSON)
            raise GptlabError(f"after the update a target's loss is {broken[0]}; reset and take a smaller lr")
        positions = [
            {
                "index": i,
                "target": b["target"],
                "piece": self.tokenizer.id_to_piece(b["target"]),
                "p_before": b["p"],
                "p_after": a["p"],
                "loss_before": b["loss"],
                "loss_after": a["loss"],
                "top_before": b["top"],
                "top_after": a["top"],
            }
            for i, (b, a) in enumerate(zip(before, after))
        ]
        return {
            "text": self.tokenizer.decode(ids),
            "tokens": [self.tokenizer.id_to_piece(i) for i in ids[:-1]],
            "loss_before": sum(b["loss"] for b in before) / len(before),
            "loss_after": sum(a["loss"] for a in after) / len(after),
            "losses": losses,
            "positions": positions,
            "grad_norm_by_layer": grad_by_layer,
            "grad_norm_by_role": grad_by_role,
            "update_norm_by_role": update_by_role,
            "lr": first_lr,
            "step_ms": step_ms,
            "trained_steps": self.trained_steps,
            "run_step": self.run_step,
            "note": self.note,
        }

    def reset(self) -> None:
        """Back to the run's weights, optimizer state and dropout stream, as just loaded."""
        weights, optimizer, rng = self._saved
        self.model.load_state_dict(weights)
        # load_state_dict keeps the tensors it is given: a copy, so later steps leave the saved state alone.
        self.runner.optimizer.load_state_dict(copy.deepcopy(optimizer))
        self._rng = rng.clone()
        self.trained_steps = 0
