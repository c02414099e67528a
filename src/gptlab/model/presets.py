"""Named sizes: each preset is a model part (shape and variant) and a train part (fitting settings)."""

from __future__ import annotations

from typing import Any

from gptlab.errors import GptlabError

# Presets without a vocabulary of their own take it from the dataset; where there is none (info,
# bench), they are sized as character models of tinyshakespeare's 65 characters.
CHAR_VOCAB = 65

# The modern recipe (speedrun lineage): rotary positions, RMSNorm, QK-norm, ReLU² MLP, an untied
# zero-initialised head, Muon for the hidden matrices and AdamW for the rest, warm-up–stable–decay.
# Calibrated on the CPU with benchmarks/recipe_race.py (docs/benchmarks/recipe_race.md).
MODERN_MODEL: dict[str, Any] = {
    "position": "rope",
    "norm": "rmsnorm",
    "qk_norm": True,
    "mlp": "relu2",
    "tie_embeddings": False,
    "zero_init": True,
    "bias": False,
}
MODERN_TRAIN: dict[str, Any] = {
    "optimizer": "muon",
    "lr": 0.03,
    "muon_momentum": 0.9,
    "embedding_lr": 0.1,
    "head_lr": 0.006,
    "vector_lr": 0.01,
    "beta1": 0.8,
    "beta2": 0.95,
    "weight_decay": 0.0,
    "schedule": "wsd",
    # A long warm-down to a small final rate: the one speedrun addition that reached val 1.886 sooner on
    # both seeds (benchmarks/recipe_ablation.py, 2026-12-05; it was 0.35 to zero before).
    "decay_fraction": 0.65,
    "final_lr_frac": 0.05,
    "warmup_steps": 0,
    "min_lr": 0.0,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The classic CPU character model (GPT-2 recipe) that learns visible Shakespeare in a few minutes.
    "cpu-tiny": {
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.0},
        "train": {
            "batch_size": 16,
            "max_steps": 1200,
            "lr": 2e-3,
            "min_lr": 2e-4,
            "warmup_steps": 100,
            "beta2": 0.99,
            "eval_interval": 200,
            "eval_batches": 10,
            "checkpoint_interval": 400,
            "sample_prompt": "ROMEO:",
        },
    },
    # The same size and budget with the modern recipe: the demo's default.
    "cpu-modern": {
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.0, **MODERN_MODEL},
        "train": {
            "batch_size": 16,
            "max_steps": 1200,
            **MODERN_TRAIN,
            "eval_interval": 200,
            "eval_batches": 10,
            "checkpoint_interval": 400,
            "sample_prompt": "ROMEO:",
        },
    },
    # The classic small CPU character configuration (T=64, B=12, 4x4x128, 2000 steps).
    "cpu-small": {
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0},
        "train": {
            "batch_size": 12,
            "max_steps": 2000,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 100,
            "beta2": 0.99,
            "eval_interval": 250,
            "eval_batches": 20,
        },
    },
    # The size used by the TutorialLLM teaching code.
    "tutorial": {
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 64, "block_size": 256, "dropout": 0.1},
        "train": {"batch_size": 16, "max_steps": 2000, "lr": 1e-3, "min_lr": 1e-4},
    },
    # The shakespeare-char GPU configuration (6x6x384, T=256, B=64, dropout 0.2, 5000 steps).
    "char-gpu": {
        "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2},
        "train": {
            "batch_size": 64,
            "max_steps": 5000,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 100,
            "beta2": 0.99,
            "eval_interval": 250,
            "eval_batches": 200,
        },
    },
    # Its modern counterpart: same shape, the modern recipe, fewer steps.
    "char-gpu-modern": {
        "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.0, **MODERN_MODEL},
        "train": {"batch_size": 64, "max_steps": 1500, **MODERN_TRAIN, "eval_interval": 250, "eval_batches": 200},
    },
    # GPT-2 and GPT-3 shapes (vocabulary of the GPT-2 BPE, 50257).
    "gpt2-small": {
        "model": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257},
        "train": {"lr": 6e-4, "min_lr": 6e-5, "warmup_steps": 700, "beta2": 0.95, "batch_size": 8},
    },
    "gpt2-medium": {
        "model": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "block_size": 1024, "vocab_size": 50257},
        "train": {"lr": 3e-4, "min_lr": 3e-5, "beta2": 0.95, "batch_size": 4},
    },
    "gpt2-large": {
        "model": {"n_layer": 36, "n_head": 20, "n_embd": 1280, "block_size": 1024, "vocab_size": 50257},
        "train": {"lr": 2.5e-4, "min_lr": 2.5e-5, "beta2": 0.95, "batch_size": 2},
    },
    "gpt2-xl": {
        "model": {"n_layer": 48, "n_head": 25, "n_embd": 1600, "block_size": 1024, "vocab_size": 50257},
        "train": {"lr": 2e-4, "min_lr": 2e-5, "beta2": 0.95, "batch_size": 1},
    },
    "gpt3": {
        "model": {"n_layer": 96, "n_head": 96, "n_embd": 12288, "block_size": 2048, "vocab_size": 50257},
        "train": {"lr": 6e-5, "min_lr": 6e-6, "beta2": 0.95, "batch_size": 1},
    },
}


def preset_overrides(name: str) -> dict[str, dict[str, Any]]:
    """A named preset's settings by section ({"model": {...}, "train": {...}}), or a clear error."""
    if name not in PRESETS:
        raise GptlabError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return {section: dict(values) for section, values in PRESETS[name].items()}
