"""Fine-tuning and alignment as training sessions: the trainer's loop with its hooks overridden
(train/trainer.TrainingSession): records instead of a prepared dataset, the base run's weights as
the start, and evaluation on held-out records (with answers to held-out prompts) instead of the
pretraining splits.

sft: the language-model loss on the assistant's tokens only (the loss mask).
dpo: DPO (posttrain/dpo.py) against a frozen copy of the starting point.
rm: a reward model (posttrain/reward.py): the Bradley–Terry loss on preference pairs.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any

import torch

from gptlab.data.batch import Batch
from gptlab.data.corpora import SkipReport
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write_json
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.model import build_model
from gptlab.model.gpt import GPT
from gptlab.model.loss import lm_loss
from gptlab.posttrain.dpo import DPOObjective, Preference
from gptlab.posttrain.examples import Example, RecordLoader, collate, encode_example, encode_pair, held_out, pair_batch
from gptlab.posttrain.grow import load_grown
from gptlab.posttrain.records import read_instructions, read_preferences
from gptlab.posttrain.reward import PairScores, RewardObjective
from gptlab.posttrain.template import END, ChatTemplate, Message, add_chat_tokens
from gptlab.precision import autocast
from gptlab.runs import TOKENIZER, load_run
from gptlab.tokenizers import load_tokenizer
from gptlab.train.trainer import TrainingSession

DATA_DESCRIPTION = "data_meta.json"
EVAL_ROWS = 32  # records per forward pass when evaluating


def file_sha256(path: str | Path) -> str:
    """The data file's checksum: a resume must train on the same records."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PosttrainSession(TrainingSession):
    """One fine-tuning (sft), alignment (dpo) or reward-model (rm) session of the training loop."""

    reads_prepared_dataset = False
    # Examples (sft), pairs of them (dpo), or prompts (rl: posttrain/rl.py).
    train_items: list[Any]
    val_items: list[Any]

    @property
    def dpo(self) -> bool:
        return self.cfg.posttrain.stage == "dpo"

    @property
    def pairs(self) -> bool:
        """Whether the records are preference pairs (alignment and reward models)."""
        return self.cfg.posttrain.stage in ("dpo", "rm")

    def load_data(self) -> None:
        post, run = self.cfg.posttrain, self.run
        base_tokenizer = load_tokenizer(Path(post.base) / TOKENIZER)
        self.tokenizer = load_tokenizer(run / TOKENIZER) if self.resume else add_chat_tokens(base_tokenizer)
        self.cfg.model.vocab_size = self.tokenizer.vocab_size
        self.template = ChatTemplate(self.tokenizer)
        self.sha256 = file_sha256(post.data)
        if self.resume:
            saved = self._saved_description()
            if saved.get("sha256") != self.sha256:
                raise GptlabError(
                    f"{post.data} changed since {run} started training on it; resume needs the "
                    "same records (start a new run for new data)"
                )
        self.report = SkipReport()
        block = self.example_width()
        items: list[Example] | list[tuple[Example, Example]]
        if self.pairs:
            pairs = read_preferences(post.data, self.report)
            items = [ab for p in pairs if (ab := encode_pair(self.template, p, block, self.report)) is not None]
        else:
            conversations = read_instructions(post.data, self.report)
            items = [
                e for c in conversations if (e := encode_example(self.template, c, block, self.report)) is not None
            ]
        train_ids, val_ids = held_out(len(items), post.held_out, self.tcfg.seed)
        self.train_items = [items[i] for i in train_ids]
        self.val_items = [items[i] for i in val_ids]
        for line in self.report.lines():
            self.say(line)
        self.say(
            f"{len(self.train_items):,} training and {len(self.val_items):,} held-out "
            f"{'pairs' if self.pairs else 'records'} from {post.data}"
        )
        if post.epochs > 0 and not self.resume:
            global_batch = self.tcfg.batch_size * self.tcfg.grad_accum * self.ranks.world_size
            self.tcfg.max_steps = max(1, math.ceil(post.epochs * len(self.train_items) / global_batch))
            self.say(f"{post.epochs:g} epoch(s) of {len(self.train_items):,} records: {self.tcfg.max_steps} steps")

    def _saved_description(self) -> dict[str, Any]:
        import json

        try:
            return json.loads((self.run / DATA_DESCRIPTION).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def start_weights(self) -> int:
        """The base run's weights, its vocabulary grown by the chat tokens (posttrain/grow.py)."""
        load_grown(self._base_model, self.model)
        return 0

    @functools.cached_property
    def _base_model(self) -> torch.nn.Module:
        """The base run's model, read once: the start of the weights and, for DPO, the reference."""
        return load_run(self.cfg.posttrain.base, self.device).model

    def example_width(self) -> int:
        """The most input positions an example may take (its tokens: one more, the last target)."""
        return self.cfg.model.block_size

    def objective(self) -> DPOObjective | RewardObjective | None:
        # Called after start_weights (or a resume): the base model read once serves both, then goes.
        base = self._base_model if self.dpo else None
        self.__dict__.pop("_base_model", None)
        if base is None:
            return None
        # The reference is the starting point, frozen: the base run's weights (grown), even on resume.
        reference = build_model(self.cfg.model).to(self.device)
        load_grown(base, reference)
        self.dpo_objective = DPOObjective(reference, self.cfg.posttrain.beta)
        return self.dpo_objective

    def train_loader(self) -> RecordLoader:
        return RecordLoader(self.train_items, self.tcfg.batch_size, self.tcfg.seed, pairs=self.pairs)

    def write_data_description(self) -> None:
        post = self.cfg.posttrain
        atomic_write_json(
            self.run / DATA_DESCRIPTION,
            {
                "stage": post.stage,
                "base": post.base,
                "data": post.data,
                "sha256": self.sha256,
                "train_records": len(self.train_items),
                "held_out_records": len(self.val_items),
                "skipped": dict(self.report.reasons),
            },
        )

    def check_dataset(self) -> None:
        """Nothing to watch: the records were read whole at the start (and checked on resume)."""

    # --- evaluation ---

    @torch.no_grad()
    def _sft_loss(self, items: list) -> float:
        """Mean loss per answer token over items (nats)."""
        nats, count = 0.0, 0
        for i in range(0, len(items), EVAL_ROWS):
            batch = collate(items[i : i + EVAL_ROWS]).to(self.device)
            with autocast(self.device, self.tcfg.precision):
                logits, _ = self.model(batch.inputs)
            nats += lm_loss(logits, batch.loss_targets(), reduction="sum").item()
            assert batch.loss_mask is not None  # collate always masks the prompt out
            count += int(batch.loss_mask.sum())
        return nats / max(count, 1)

    @torch.no_grad()
    def _preference(self, items: list) -> dict[str, float]:
        """DPO loss, reward margin and preference accuracy, averaged over the pairs of items."""
        sums = {"loss": 0.0, "margin": 0.0, "accuracy": 0.0}
        for i in range(0, len(items), EVAL_ROWS):
            chunk = items[i : i + EVAL_ROWS]
            batch: Batch = pair_batch(chunk).to(self.device)
            with autocast(self.device, self.tcfg.precision):
                measured: Preference = self.dpo_objective.measure(self.model, batch)
            for key in sums:
                sums[key] += getattr(measured, key).item() * len(chunk)
        return {k: v / len(items) for k, v in sums.items()}

    def evaluate_and_sample(self, step: int) -> dict[str, float]:
        """Held-out figures (and the same on as many training records), then answers to held-out
        prompts; every rank computes, rank 0 prints and writes."""
        self.model.eval()
        state = self.state
        record: dict[str, Any] = {
            "step": step,
            "tokens_seen": state.tokens_seen,
            "elapsed_s": round(state.elapsed_s, 3),
        }
        same_size = self.train_items[: len(self.val_items)]
        if self.dpo:
            val, train = self._preference(self.val_items), self._preference(same_size)
            record.update(
                eval_train_loss=train["loss"],
                val_loss=val["loss"],
                reward_margin=val["margin"],
                preference_accuracy=val["accuracy"],
            )
            self.say(
                f"step {step}: train loss {train['loss']:.4f}, val loss {val['loss']:.4f}, reward margin "
                f"{val['margin']:.3f}, preference accuracy {val['accuracy']:.1%} (held-out pairs)"
            )
        else:
            record.update(eval_train_loss=self._sft_loss(same_size), val_loss=self._sft_loss(self.val_items))
            self.say(
                f"step {step}: train loss {record['eval_train_loss']:.4f}, val loss {record['val_loss']:.4f} "
                "(answer tokens of held-out records)"
            )
        self._samples(step)
        self.model.train()
        if self.metrics is not None:  # rank 0
            self.metrics.write(record)
        return {"train": record["eval_train_loss"], "val": record["val_loss"]}

    def _samples(self, step: int) -> None:
        """Answers to the first sample_prompts held-out prompts, to watch the model learn to stop."""
        n, tcfg = self.cfg.posttrain.sample_prompts, self.tcfg
        if not n or not tcfg.sample_tokens:
            return
        prompts = []
        for item in self.val_items[:n]:
            example = item[0] if isinstance(item, tuple) else item  # a DPO item is a (chosen, rejected) pair
            conversation = self.template.decode(example.ids)
            prompts.append([m for m in conversation if m.role != "assistant"] or [Message("user", "")])
        params = SamplingParams(
            tcfg.sample_tokens, tcfg.sample_temperature, tcfg.sample_top_k, stop=[END], seed=tcfg.seed + step
        )
        texts, ends = [""] * len(prompts), ["length"] * len(prompts)
        model = self.model
        assert isinstance(model, GPT)  # posttrain/run.py refuses an encoder–decoder base
        for steps in generate_steps(model, self.tokenizer, [self.template.prompt(p) for p in prompts], params):
            for s in steps:
                texts[s.seq] += s.text
                ends[s.seq] = s.finish or ends[s.seq]
        shown = "\n".join(
            f"> {p[-1].content}\n{t}{'' if e == 'stop' else ' [no end of turn]'}"
            for p, t, e in zip(prompts, texts, ends)
        )
        self.say(f"--- answers at step {step} ---\n{shown}\n---")
        if self.main:
            with open(self.run / "samples.txt", "a", encoding="utf-8") as f:
                f.write(f"=== step {step} ===\n{shown}\n\n")


class RewardSession(PosttrainSession):
    """`gptlab reward`: a reward model (the base run with a scalar head) trained on preference pairs."""

    command = "reward"
    reward_objective = RewardObjective()

    def example_width(self) -> int:
        # The reward reads a whole conversation in one pass (inputs and the last target), so an example
        # holds at most block_size tokens, one fewer than a language-model example's block_size + 1.
        return self.cfg.model.block_size - 1

    def objective(self) -> RewardObjective:
        self.__dict__.pop("_base_model", None)  # read once for the start weights; not needed after
        if not self.cfg.model.tie_embeddings:
            # A reward never reads the unembedding: frozen, it stays out of the optimizer and out of
            # DDP's gradient exchange (which refuses a parameter that gets no gradient).
            self.model.lm_head.weight.requires_grad_(False)
        return self.reward_objective

    @torch.no_grad()
    def _pair_scores(self, items: list) -> dict[str, float]:
        """Bradley–Terry loss, reward margin and pair accuracy, averaged over the pairs of items."""
        sums = {"loss": 0.0, "margin": 0.0, "accuracy": 0.0}
        for i in range(0, len(items), EVAL_ROWS):
            chunk = items[i : i + EVAL_ROWS]
            with autocast(self.device):
                measured: PairScores = self.reward_objective.measure(self.model, pair_batch(chunk).to(self.device))
            for key in sums:
                sums[key] += getattr(measured, key).item() * len(chunk)
        return {k: v / len(items) for k, v in sums.items()}

    def evaluate_and_sample(self, step: int) -> dict[str, float]:
        """Held-out pair accuracy (and the loss on as many training pairs); a reward model writes no
        samples. Every rank computes, rank 0 prints and writes."""
        self.model.eval()
        val = self._pair_scores(self.val_items)
        train = self._pair_scores(self.train_items[: len(self.val_items)])
        self.model.train()
        record = {
            "step": step,
            "tokens_seen": self.state.tokens_seen,
            "elapsed_s": round(self.state.elapsed_s, 3),
            "eval_train_loss": train["loss"],
            "val_loss": val["loss"],
            "reward_margin": val["margin"],
            "pair_accuracy": val["accuracy"],
            "train_pair_accuracy": train["accuracy"],
        }
        self.say(
            f"step {step}: train loss {train['loss']:.4f}, val loss {val['loss']:.4f}, reward margin "
            f"{val['margin']:.3f}, pair accuracy {val['accuracy']:.1%} held-out ({train['accuracy']:.1%} train)"
        )
        if self.metrics is not None:  # rank 0
            self.metrics.write(record)
        return {"train": train["loss"], "val": val["loss"]}


class FinetuneSession(PosttrainSession):
    """`gptlab finetune`: instruction fine-tuning."""

    command = "finetune"


class AlignSession(PosttrainSession):
    """`gptlab align`: preference alignment with DPO."""

    command = "align"


SESSIONS = {"sft": FinetuneSession, "dpo": AlignSession, "rm": RewardSession}
