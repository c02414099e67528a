"""`gptlab import DIR --out RUN`: a local transformers checkpoint (GPT-2, Llama, Qwen3) as a gptlab run.

The run holds the model's config, its tokenizer (the checkpoint's tokenizer.json, kept as it is) and
one checkpoint set. With --data (a dataset prepared with `--tokenizer DIR`), the set also holds a
fresh optimizer and data-order state at step 0, so `gptlab train --resume RUN` continues pretraining
from the imported weights. `sample`, `eval`, `serve` and `export` take the run either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gptlab.config import RunConfig, apply_overrides
from gptlab.errors import GptlabError
from gptlab.interop.architectures import model_config_from_hf
from gptlab.interop.hf_gpt2 import from_gpt2_state_dict
from gptlab.interop.hf_llama import from_llama_state_dict
from gptlab.model import Model, build_model
from gptlab.outputs import check_output_dir, staged_directory
from gptlab.runs import CONFIG, TOKENIZER, WEIGHTS, current_checkpoint, is_run_dir, publish_checkpoint, write_weights
from gptlab.tokenizers.huggingface import HuggingFaceTokenizer


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory's safetensors file(s), sharded ones included."""
    index = src / "model.safetensors.index.json"
    try:
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        elif (src / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise GptlabError(f"{src} has no model.safetensors (only safetensors weights are imported: no pickles)")
        tensors: dict[str, torch.Tensor] = {}
        for name in files:
            tensors |= load_file(str(src / name))
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise GptlabError(f"cannot read the weights in {src}: {str(exc).splitlines()[0]}") from None
    return {k: v.float() for k, v in tensors.items()}  # gptlab keeps float32 weights on the CPU


def import_checkpoint(
    src: str | Path, out: str | Path, data: str | Path | None = None, overrides: list[str] | None = None
) -> Path:
    """Write the checkpoint in src as the gptlab run out; return out."""
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise GptlabError(f"{src} is not a transformers checkpoint directory (no config.json)")
    # A run without a checkpoint (an import killed before this one staged its output) may be replaced.
    check_output_dir(out, [("DIR", src), ("--data", data)], "a gptlab run without a checkpoint", _replaceable)
    try:
        hf = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GptlabError(f"{src / 'config.json'} is not valid JSON: {exc}") from None
    if not isinstance(hf, dict):
        raise GptlabError(f"{src / 'config.json'} is not a JSON object")
    cfg = RunConfig(model=model_config_from_hf(hf), preset="imported")
    apply_overrides(cfg, [o if o.startswith("train.") else f"train.{o}" for o in overrides or []])
    cfg.validate()
    if not (src / "tokenizer.json").is_file():
        raise GptlabError(f"{src} has no tokenizer.json (a fast tokenizer file is needed)")
    tokenizer = HuggingFaceTokenizer.from_file(src / "tokenizer.json", cfg.model.vocab_size)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise GptlabError(
            f"the tokenizer has {tokenizer.vocab_size:,} ids but the model only "
            f"{cfg.model.vocab_size:,} (vocab_size in config.json)"
        )
    theirs = read_hf_weights(src)
    ours = (from_gpt2_state_dict if cfg.model.position == "learned" else from_llama_state_dict)(cfg.model, theirs)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as exc:
        raise GptlabError(
            f"the weights in {src} do not fit its config.json: {' '.join(str(exc).splitlines()[1:2])}"
        ) from None
    state = None
    if data is not None:
        cfg.data = str(Path(data).resolve())
        state = _fresh_training_state(model, cfg, tokenizer)
    # Written beside out and renamed into place whole: nothing half-imported is left to look like a run.
    with staged_directory(out, "import", replace=True) as staging:
        tokenizer.save(staging / TOKENIZER)
        (staging / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if state is None:  # weights only: enough to sample, evaluate, serve and export

            def weights_only(directory: Path) -> list[str]:
                write_weights(model, directory / WEIGHTS, 0)
                return [WEIGHTS]

            publish_checkpoint(staging, 0, weights_only)
        else:
            from gptlab.train.checkpoint import save_checkpoint

            save_checkpoint(staging, model, state[1], state[0])
    return out


def _replaceable(path: Path) -> bool:
    """A run directory holding no checkpoint, which an import may replace."""
    return is_run_dir(path) and current_checkpoint(path) is None


def _fresh_training_state(model: Model, cfg: RunConfig, tokenizer: HuggingFaceTokenizer):
    """Optimizer and train state at step 0, as a new run's first checkpoint would hold them."""
    from gptlab.data.loader import BatchLoader, Dataset
    from gptlab.train.checkpoint import TrainState
    from gptlab.train.optim import build_optimizer

    dataset = Dataset(cfg.data)
    if dataset.tokenizer.to_dict() != tokenizer.to_dict():
        raise GptlabError(
            f"the dataset {cfg.data} was not prepared with this checkpoint's tokenizer; "
            "prepare it with `gptlab prepare CORPUS --tokenizer CHECKPOINT_DIR`"
        )
    loader = BatchLoader(dataset, "train", cfg.train.batch_size, cfg.model.block_size, seed=cfg.train.seed)
    optimizer = build_optimizer(model, cfg.train, torch.device("cpu"))
    return TrainState(loader=loader.state_dict()), optimizer
