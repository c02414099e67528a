"""Named sizes: each preset is a set of config overrides (model shape and fitting train settings)."""

from __future__ import annotations

from typing import Any

from gptlab.errors import GptlabError

# Presets without a vocabulary of their own take it from the dataset; where there is none (info,
# bench), they are sized as character models of tinyshakespeare's 65 characters.
CHAR_VOCAB = 65

PRESETS: dict[str, dict[str, Any]] = {
    # The demo's default: a character model that learns visible Shakespeare in a few CPU minutes.
    "cpu-tiny": {
        "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "dropout": 0.0,
        "batch_size": 16, "max_steps": 1200, "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 100,
        "beta2": 0.99, "eval_interval": 200, "eval_batches": 10, "checkpoint_interval": 400,
        "sample_prompt": "ROMEO:",
    },
    # The classic small CPU character configuration (T=64, B=12, 4x4x128, 2000 steps).
    "cpu-small": {
        "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0,
        "batch_size": 12, "max_steps": 2000, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
        "beta2": 0.99, "eval_interval": 250, "eval_batches": 20,
    },
    # The size used by the TutorialLLM teaching code.
    "tutorial": {
        "n_layer": 4, "n_head": 4, "n_embd": 64, "block_size": 256, "dropout": 0.1,
        "batch_size": 16, "max_steps": 2000, "lr": 1e-3, "min_lr": 1e-4,
    },
    # The shakespeare-char GPU configuration (6x6x384, T=256, B=64, dropout 0.2, 5000 steps).
    "char-gpu": {
        "n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2,
        "batch_size": 64, "max_steps": 5000, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100,
        "beta2": 0.99, "eval_interval": 250, "eval_batches": 200,
    },
    # GPT-2 and GPT-3 shapes (vocabulary of the GPT-2 BPE, 50257).
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257,
                   "lr": 6e-4, "min_lr": 6e-5, "warmup_steps": 700, "beta2": 0.95, "batch_size": 8},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "block_size": 1024, "vocab_size": 50257,
                    "lr": 3e-4, "min_lr": 3e-5, "beta2": 0.95, "batch_size": 4},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280, "block_size": 1024, "vocab_size": 50257,
                   "lr": 2.5e-4, "min_lr": 2.5e-5, "beta2": 0.95, "batch_size": 2},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600, "block_size": 1024, "vocab_size": 50257,
                "lr": 2e-4, "min_lr": 2e-5, "beta2": 0.95, "batch_size": 1},
    "gpt3": {"n_layer": 96, "n_head": 96, "n_embd": 12288, "block_size": 2048, "vocab_size": 50257,
             "lr": 6e-5, "min_lr": 6e-6, "beta2": 0.95, "batch_size": 1},
}


def preset_overrides(name: str) -> dict[str, Any]:
    """The overrides of a named preset, or a clear error listing the known ones."""
    if name not in PRESETS:
        raise GptlabError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return dict(PRESETS[name])
