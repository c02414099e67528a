"""Configuration as data: model and training dataclasses, TOML loading, overrides, validation.

Every field can come from a preset, a TOML file (sections [model] and [train]) or a `key=value`
override on the command line, applied in that order. `validate()` names the bad field and why.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from gptlab.errors import GptlabError

# gpt: decoder-only; encdec: an encoder over a source and a decoder with cross-attention to it.
Arch = Literal["gpt", "encdec"]
Position = Literal["learned", "rope"]
Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "gelu_tanh", "relu2", "swiglu"]
Optimizer = Literal["adamw", "sgd", "muon"]
Schedule = Literal["cosine", "wsd"]
Switch = Literal["auto", "on", "off"]
Logger = Literal["none", "tensorboard", "wandb"]
MuonCoeffs = Literal["ns5", "polar"]
PrecisionName = Literal["auto", "fp32", "bf16"]

MAX_BLOCK_SIZE = 1 << 20  # context length: far beyond any model gptlab trains
# Bounds far beyond any model there is (the largest have ~130 layers, ~16k wide, ~260k tokens), so that a
# mistyped or hostile number is refused by name instead of asking for terabytes.
MAX_LAYERS = 10_000
MAX_WIDTH = 1 << 18
MAX_VOCAB = 1 << 32  # a dataset stores token ids as uint32 at most
MAX_EPOCHS = 1_000_000
INT_LIMIT = 1 << 63  # every integer field fits a signed 64-bit integer (numpy, torch)


@dataclass
class ModelConfig:
    """Shape of the decoder-only Transformer, and which variant of each layer it uses.

    Every default reproduces the 2019 GPT-2 model; the switches choose the modern variants.
    arch=encdec builds the encoder–decoder Transformer instead, n_layer blocks in each of its halves.
    """

    arch: Arch = "gpt"
    vocab_size: int = 0  # 0: taken from the dataset's tokenizer at train time
    block_size: int = 128  # context length T
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and norm layers, as in GPT-2
    position: Position = "learned"  # learned absolute embedding, or rotary (RoPE) in attention
    rope_base: float = 10000.0  # RoPE: the wavelength base of the rotation frequencies
    norm: Norm = "layernorm"
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention
    # gelu (exact) or gelu_tanh (GPT-2's tanh form): 4x wide; relu2 (ReLU squared): 4x wide;
    # swiglu: ~8/3x wide, same parameters
    mlp: Mlp = "gelu"
    tie_embeddings: bool = True  # unembedding shares the token embedding's matrix
    zero_init: bool = False  # output projections (and an untied head) start at zero
    logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap); 0: off
    reward_head: bool = False  # a scalar head on the final norm: a reward model (`gptlab reward`)
    # Speedrun-lineage additions to the modern recipe (arch=gpt only; off by default: models stay bit-exact).
    value_embeds: bool = False  # alternate layers (the last included) add a gated token embedding to their values
    resid_mix: bool = False  # before each block, x := resid_lambda * x + x0_lambda * x0 (x0: the embedding), learned
    smear: bool = False  # each token's embedding takes in a learned, gated share of the previous token's

    @property
    def head_dim(self) -> int:
        """Channels per attention head (D): n_embd split evenly across the n_head heads."""
        return self.n_embd // self.n_head

    def validate(self) -> None:
        """Refuse impossible shapes with a message naming the field."""
        _check_types(self)
        _positive(self, "block_size", "n_layer", "n_head", "n_embd", "rope_base")
        for name, most in (
            ("block_size", MAX_BLOCK_SIZE),  # its position table alone would not fit in memory
            ("n_layer", MAX_LAYERS),
            ("n_embd", MAX_WIDTH),
            ("vocab_size", MAX_VOCAB),
        ):
            if getattr(self, name) > most:
                _bad(name, getattr(self, name), f"must be at most {most:,}")
        _fits_64_bits(self)
        if self.vocab_size < 0:
            _bad("vocab_size", self.vocab_size, "must be >= 0 (0 means: from the tokenizer)")
        if self.n_embd % self.n_head:
            _bad("n_embd", self.n_embd, f"is not divisible by n_head={self.n_head}")
        if self.position == "rope" and self.head_dim % 2:
            _bad("n_head", self.n_head, f"gives an odd head size {self.head_dim}; rope rotates pairs")
        if not 0.0 <= self.dropout < 1.0:
            _bad("dropout", self.dropout, "must be in [0, 1)")
        if self.logit_softcap < 0:
            _bad("logit_softcap", self.logit_softcap, "must be >= 0 (0 is off)")
        if self.reward_head and self.arch != "gpt":
            _bad("reward_head", self.reward_head, "needs arch=gpt (a reward model reads one sequence)")
        for name in ("value_embeds", "resid_mix", "smear"):
            if getattr(self, name) and self.arch != "gpt":
                _bad(name, True, f"is built for arch='gpt' only (arch={self.arch!r})")


@dataclass
class TrainConfig:
    """How to train: batches, optimizer, schedule, evaluation, checkpoints, samples."""

    batch_size: int = 32  # B: windows per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 1000
    optimizer: Optimizer = "adamw"  # muon: Muon for hidden matrices, AdamW for the other roles
    lr: float = 1e-3  # peak learning rate (of the hidden matrices; of every role unless set below)
    embedding_lr: float = 0.0  # peak lr of token/position embeddings; 0: lr
    head_lr: float = 0.0  # peak lr of an untied output head; 0: lr
    vector_lr: float = 0.0  # peak lr of norms' gains and biases; 0: lr
    min_lr: float = 1e-4  # cosine: reached at max_steps (other roles keep their ratio to lr)
    schedule: Schedule = "cosine"  # cosine decay to min_lr, or wsd: warm-up, stable, linear decay to 0
    decay_fraction: float = 0.2  # wsd: the last fraction of steps that decays (to final_lr_frac of the peak)
    final_lr_frac: float = 0.0  # wsd: where the decay ends, as a fraction of each role's peak lr
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    weight_decay: float = 0.1  # hidden matrices (and, with adamw, embeddings); never vectors
    beta1: float = 0.9
    beta2: float = 0.99
    momentum: float = 0.0  # SGD only
    muon_momentum: float = 0.95  # Muon only (Nesterov)
    # How Muon orthogonalises and applies its update (train/muon.py); the defaults are torch.optim.Muon's.
    muon_coeffs: MuonCoeffs = "ns5"  # ns5: one fixed quintic every step; polar: the Polar Express schedule
    muon_ns_steps: int = 5  # orthogonalisation iterations (polar: its first ones)
    muon_normalize: bool = False  # NorMuon: each row of the update divided by its running RMS, norm kept
    cautious_wd: bool = False  # Muon decays only the weights its update also moves toward zero
    # How the CPU computes (precision.py): auto times a forward and backward pass of the model in fp32
    # and in bf16 autocast at start-up and keeps the faster (recorded in the run's config); CUDA: bf16.
    precision: PrecisionName = "auto"
    # Muon's orthogonalisation (train/step.py): auto follows an asked precision and, where precision is
    # auto on the CPU, times Newton–Schulz on the run's own stacks in both (recorded); CUDA: bf16.
    muon_precision: PrecisionName = "auto"
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250
    eval_batches: int = 20  # batches averaged for each of the train/val loss estimates
    eval_batch_size: int = 0  # windows per evaluation batch; 0: batch_size (set it to compare runs alike)
    log_interval: int = 10
    checkpoint_interval: int = 500
    keep_checkpoints: int = 1  # complete checkpoint sets kept in RUN/checkpoints, the newest first
    # Keep the weights at steps 0, 50, 100, 200, 400, ... and the last (RUN/history) for the page's slider
    # and `sample --step`; None (auto): on below 20 M parameters, where the series costs a few tens of MB
    history: bool | None = None
    sample_prompt: str = "\n"
    sample_tokens: int = 200
    sample_temperature: float = 0.8
    sample_top_k: int = 0  # 0: no top-k filtering
    seed: int = 1337
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps"
    compile: Switch = "auto"  # torch.compile the model: "on", "off", or "auto" (see train/step.py)
    # Schedules on the training shape (train/ramp.py; 0: off): windows start seq_len_start tokens long and
    # micro-batches batch_size_start windows, both growing linearly to block_size and batch_size over the
    # first ramp_fraction of max_steps. The learning rate does not follow; evaluation uses the full shape.
    seq_len_start: int = 0
    batch_size_start: int = 0
    ramp_fraction: float = 0.3
    fsdp: bool = False  # shard parameters, gradients and optimizer state across torchrun ranks
    logger: Logger = "none"  # also send metrics to tensorboard (RUN/tensorboard) or wandb (offline, RUN/wandb)

    def validate(self) -> None:
        """Refuse values that cannot train, naming the field."""
        _check_types(self)
        _positive(
            self,
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_interval",
            "eval_batches",
            "log_interval",
            "checkpoint_interval",
            "keep_checkpoints",
        )
        if self.lr <= 0:
            _bad("lr", self.lr, "must be > 0")
        if not 0 <= self.min_lr <= self.lr:
            _bad("min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
        for name in ("warmup_steps", "sample_tokens", "sample_top_k", "eval_batch_size"):
            if getattr(self, name) < 0:
                _bad(name, getattr(self, name), "must be >= 0")
        for name in (
            "weight_decay",
            "grad_clip",
            "momentum",
            "sample_temperature",
            "embedding_lr",
            "head_lr",
            "vector_lr",
        ):
            if getattr(self, name) < 0:
                _bad(name, getattr(self, name), "must be >= 0")
        for name in ("beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, name) < 1:
                _bad(name, getattr(self, name), "must be in [0, 1)")
        if not 1 <= self.muon_ns_steps <= 20:
            _bad("muon_ns_steps", self.muon_ns_steps, "must be in [1, 20]")
        if not 0 < self.decay_fraction <= 1:
            _bad("decay_fraction", self.decay_fraction, "must be in (0, 1]")
        if not 0 <= self.final_lr_frac <= 1:
            _bad("final_lr_frac", self.final_lr_frac, "must be in [0, 1]")
        for name in ("seq_len_start", "batch_size_start"):
            if getattr(self, name) < 0:
                _bad(name, getattr(self, name), "must be >= 0 (0 is off)")
        if self.batch_size_start > self.batch_size:
            _bad("batch_size_start", self.batch_size_start, f"must be at most batch_size={self.batch_size}")
        if not 0 < self.ramp_fraction <= 1:
            _bad("ramp_fraction", self.ramp_fraction, "must be in (0, 1]")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            _bad("device", self.device, "must be auto, cpu, cuda, cuda:N or mps")
        if self.fsdp and self.optimizer == "muon":
            # Muon orthogonalises whole matrices; FSDP gives each rank a slice of every matrix.
            _bad(
                "optimizer",
                self.optimizer,
                "cannot run with fsdp=true (Muon needs whole matrices, "
                "FSDP shards them); use DDP (fsdp=false) or optimizer=adamw",
            )
        if not 0 <= self.seed < 2**32:  # numpy and torch generators take it (plus rank and step offsets)
            _bad("seed", self.seed, "must be in [0, 2**32)")
        _fits_64_bits(self)


Stage = Literal["", "sft", "dpo", "rm", "rl"]


@dataclass
class PosttrainConfig:
    """After pretraining: instruction fine-tuning (sft), preference alignment (dpo), a reward model
    (rm) or reinforcement learning (rl); empty for a pretraining run."""

    # "": pretraining; sft: `gptlab finetune`; dpo: `gptlab align`; rm: `gptlab reward`; rl: `gptlab rl`
    stage: Stage = ""
    base: str = ""  # the run it starts from (read, never written)
    data: str = ""  # instruction JSONL (sft), preference JSONL (dpo, rm) or prompt JSONL (rl)
    epochs: float = 0.0  # > 0: max_steps is this many passes over the training records
    held_out: int = 64  # records kept out of training for evaluation (at most a tenth of them)
    sample_prompts: int = 2  # held-out prompts answered at each evaluation
    beta: float = 0.1  # dpo: how strongly the policy is held to the reference (larger: closer)
    # rl (posttrain/grpo.py): what scores an answer, and how the answers are drawn and weighed
    reward: str = ""  # "verse" (the verse checker's score) or the path of a reward-model run
    group_size: int = 8  # answers per prompt, whose rewards are compared with each other
    rollout_tokens: int = 64  # most tokens per answer
    rollout_temperature: float = 1.0  # the temperature answers are drawn at during training
    clip: float = 0.2  # the ratio to the sampling policy is clipped to [1 - clip, 1 + clip]
    kl: float = 0.04  # weight of the KL penalty to the frozen reference (0: none)

    def validate(self) -> None:
        """Refuse values that cannot post-train, naming the field."""
        _check_types(self)
        for name in ("epochs", "held_out", "sample_prompts"):
            if getattr(self, name) < 0:
                _bad(name, getattr(self, name), "must be >= 0")
        if self.epochs > MAX_EPOCHS:
            _bad("epochs", self.epochs, f"must be at most {MAX_EPOCHS:,}")
        if self.beta <= 0:
            _bad("beta", self.beta, "must be > 0")
        if self.group_size < 2:  # one answer has no group to be compared with
            _bad("group_size", self.group_size, "must be >= 2")
        if self.rollout_tokens < 1:
            _bad("rollout_tokens", self.rollout_tokens, "must be >= 1")
        if not 1e-3 <= self.rollout_temperature <= 100:
            _bad("rollout_temperature", self.rollout_temperature, "must be in [0.001, 100]")
        if not 0 < self.clip < 1:
            _bad("clip", self.clip, "must be in (0, 1)")
        if not 0 <= self.kl < math.inf:
            _bad("kl", self.kl, "must be >= 0 and finite")
        if self.stage == "rl" and not self.reward:
            _bad("reward", self.reward, "must be 'verse' or a reward-model run for rl")
        _fits_64_bits(self)


@dataclass
class RunConfig:
    """Everything a training run needs, saved as RUN/config.json."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    posttrain: PosttrainConfig = field(default_factory=PosttrainConfig)
    preset: str = ""
    data: str = ""  # the prepared dataset directory the run trains on

    def validate(self) -> None:
        """Validate every section."""
        self.model.validate()
        self.train.validate()
        self.posttrain.validate()
        self._validate_shape_schedule()

    def _validate_shape_schedule(self) -> None:
        """The shape schedules (train/ramp.py) draw shorter windows of text for pretraining a GPT only."""
        t = self.train
        if t.seq_len_start > self.model.block_size:
            _bad("seq_len_start", t.seq_len_start, f"must be at most block_size={self.model.block_size}")
        for name in ("seq_len_start", "batch_size_start"):
            if not getattr(t, name):
                continue
            if self.model.arch != "gpt":
                _bad(name, getattr(t, name), f"is for arch='gpt' only (arch={self.model.arch!r} trains on pairs)")
            if self.posttrain.stage:
                _bad(name, getattr(t, name), f"is for pretraining only (this is a {self.posttrain.stage} run)")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of to_dict; unknown keys are refused."""
        cfg = cls(preset=str(data.get("preset", "")), data=str(data.get("data", "")))
        for section in SECTIONS:
            for key, value in (data.get(section) or {}).items():
                _set_field(getattr(cfg, section), key, value, where=section)
        return cfg


def _bad(name: str, value: Any, why: str) -> None:
    raise GptlabError(f"{name}={value!r} {why}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            _bad(name, getattr(obj, name), "must be > 0")


def _field_types(obj: Any) -> dict[str, Any]:
    """Each field's declared type, resolved from the dataclass's hints (annotations are strings here)."""
    hints = get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in fields(obj)}


def _choices(kind: Any) -> tuple[Any, ...] | None:
    """The allowed values of a Literal[...] type, else None."""
    return get_args(kind) if get_origin(kind) is Literal else None


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Turn a TOML or command-line value into the field's type, or refuse it."""
    args = get_args(kind)
    if get_origin(kind) in (Union, UnionType) and type(None) in args:
        # An optional field: "none" (or TOML's absence of a value) clears it.
        # "auto" too: an optional field's absence means "decide for me" (history=auto)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "", "auto")):
            return None
        (kind,) = [a for a in args if a is not type(None)]
    choices = _choices(kind)
    if choices is not None:
        text = value.strip() if isinstance(value, str) else value
        if text not in choices:
            _bad(name, value, f"must be one of: {', '.join(map(str, choices))}")
        return text
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            _bad(name, value, "is not a boolean (true/false)")
        try:
            value = float(text) if kind is int and "e" in text else kind(text)  # 1e6 steps
        except ValueError:
            _bad(name, value, f"is not a valid {kind.__name__}")
        if kind is float:
            return value
    if kind is bool and not isinstance(value, bool):
        _bad(name, value, "is not a boolean (true/false)")
    if kind is int and isinstance(value, float):
        if not value.is_integer():  # 2.5, and also inf and nan
            _bad(name, value, "is not a whole number")
        return int(value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        # Command lines cannot easily carry a newline; accept the usual escape.
        return value.replace("\\n", "\n")
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        _bad(name, value, f"is not a valid {kind.__name__}")
    return value


def _check_types(section: Any) -> None:
    """Every field holds a value of its declared type (a choice among the allowed ones), whoever set it:
    a float is finite (NaN passes every comparison a range check makes), an integer fits 64 bits."""
    for name, kind in _field_types(section).items():
        value = getattr(section, name)
        args = get_args(kind)
        if get_origin(kind) in (Union, UnionType) and type(None) in args:
            if value is None:
                continue
            (kind,) = [a for a in args if a is not type(None)]
        choices = _choices(kind)
        if choices is not None:
            if value not in choices:
                _bad(name, value, f"must be one of: {', '.join(map(str, choices))}")
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= INT_LIMIT:
                _bad(name, value, "is out of range")
        elif not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            _bad(name, value, f"is not a valid {kind.__name__}")
        elif kind is float and not math.isfinite(value):
            _bad(name, value, "is not a finite number")


def _fits_64_bits(section: Any) -> None:
    """Every integer field fits a signed 64-bit integer (numpy, torch): checked after the fields' own ranges,
    whose messages say more."""
    for name, kind in _field_types(section).items():
        value = getattr(section, name)
        if kind is int and not -INT_LIMIT < value < INT_LIMIT:
            _bad(name, value, "is out of range (more than 64 bits)")


def _set_field(section: Any, key: str, value: Any, where: str) -> None:
    types = _field_types(section)
    if key not in types:
        raise GptlabError(f"unknown config field '{key}' in [{where}] (known: {', '.join(types)})")
    setattr(section, key, _coerce(key, types[key], value))


SECTIONS = ("model", "train", "posttrain")


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any] | list[str]) -> None:
    """Apply `key=value` strings (or a dict); a key may be `field` or `section.field`.

    A bare field name must belong to exactly one section; one that several sections have is refused
    with the sections named, so a new field never silently changes what an old override meant.
    """
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    names = {section: set(_field_types(getattr(cfg, section))) for section in SECTIONS}
    for key, value in items:
        section, _, name = key.rpartition(".")
        if section:
            if section not in SECTIONS:
                raise GptlabError(f"unknown config section '{section}' in '{key}' (known: {', '.join(SECTIONS)})")
            _set_field(getattr(cfg, section), name, value, where=section)
            continue
        owners = [s for s in SECTIONS if name in names[s]]
        if len(owners) > 1:
            raise GptlabError(
                f"config field '{name}' is in several sections; write " + " or ".join(f"{s}.{name}" for s in owners)
            )
        if not owners:
            known = ", ".join(sorted(set().union(*names.values())))
            raise GptlabError(f"unknown config field '{name}' (known: {known})")
        _set_field(getattr(cfg, owners[0]), name, value, where=owners[0])


def _split(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise GptlabError(f"override '{text}' is not of the form key=value")
    return key.strip().lstrip("-").replace("-", "_"), value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file with [model] and [train] sections (and an optional `preset`)."""
    p = Path(path)
    if not p.is_file():
        raise GptlabError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GptlabError(f"config file {p} is not valid TOML: {exc}") from None
    unknown = set(data) - {*SECTIONS, "preset"}
    if unknown:
        raise GptlabError(
            f"config file {p}: unknown section(s) {', '.join(sorted(unknown))} (known: preset, {', '.join(SECTIONS)})"
        )
    return data


def build_config(
    preset: str | None = None, toml_path: str | Path | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Preset, then TOML file, then command-line overrides; validated."""
    from gptlab.model.presets import preset_overrides

    file_data = load_toml(toml_path) if toml_path else {}
    name = preset or file_data.get("preset") or "cpu-tiny"
    cfg = RunConfig(preset=name)
    for section, values in preset_overrides(name).items():
        for key, value in values.items():
            _set_field(getattr(cfg, section), key, value, where=section)
    for section in SECTIONS:
        for key, value in (file_data.get(section) or {}).items():
            _set_field(getattr(cfg, section), key, value, where=section)
    apply_overrides(cfg, overrides or [])
    cfg.validate()
    return cfg
