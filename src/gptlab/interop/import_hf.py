"""`gptlab import DIR --out RUN`: a local transformers checkpoint (GPT-2, Llama, Qwen3) as a gptlab run.

The run holds the model's config, its tokenizer (the checkpoint's tokenizer.json, kept as it is) and
one checkpoint set. With --data (a dataset prepared with `--tokenizer DIR`), the set also holds a
fresh optimizer and data-order state at step 0, so `gptlab train --resume RUN` continues pretraining
from the imported weights. `sample`, `eval`, `serve` and `export` take the run either way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from gptlab.config import ModelConfig, RunConfig, apply_overrides
from gptlab.errors import GptlabError
from gptlab.interop import hf_gpt2, hf_llama
from gptlab.interop.architectures import model_config_from_hf
from gptlab.interop.export import hf_state_dict
from gptlab.jsonfile import MiB, read_json_object
from gptlab.model import Model, build_model
from gptlab.outputs import check_output_dir, staged_directory
from gptlab.runs import CONFIG, TOKENIZER, WEIGHTS, current_checkpoint, is_run_dir, publish_checkpoint, write_weights
from gptlab.tokenizers.huggingface import HuggingFaceTokenizer

INDEX = "model.safetensors.index.json"
FLOATS = ("F16", "BF16", "F32", "F64")  # safetensors' names; integers, booleans and 8-bit floats are no weights
# Where each architecture numbers its blocks (the rest of a tensor's name is the same in every block).
LAYER = re.compile(r"^(transformer\.h|model\.layers)\.0\.")


def inside(src: Path, name: str) -> Path:
    """src/name resolved, refused unless it stays inside src: a checkpoint names only its own files
    (no absolute path, no '..', no link out)."""
    try:
        path = (src / name).resolve()
    except (ValueError, OSError) as exc:  # a NUL byte in the name, a loop of links
        raise GptlabError(f"{src} names {name!r}, which is no file name: {exc}") from None
    if not path.is_relative_to(src.resolve()):
        raise GptlabError(
            f"{src} names {name!r}, which lies outside it; only files inside the checkpoint directory are read "
            "(a cache snapshot of links: download it with --local-dir instead)"
        )
    return path


def weight_files(src: Path) -> list[Path]:
    """The safetensors file(s) of a checkpoint directory, sharded ones from its index."""
    if (src / INDEX).is_file():
        index = read_json_object(inside(src, INDEX), 16 * MiB)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise GptlabError(f"{src / INDEX} has no weight_map of tensor names to file names")
        names = sorted(set(weight_map.values()))
    elif (src / "model.safetensors").is_file():
        names = ["model.safetensors"]
    else:
        raise GptlabError(f"{src} has no model.safetensors (only safetensors weights are imported: no pickles)")
    files = [inside(src, name) for name in names]
    for name, path in zip(names, files, strict=True):
        if not path.is_file():
            raise GptlabError(f"{src / INDEX} names {name!r}, which is not a file in {src}")
    return files


@dataclass(frozen=True)
class Stored:
    """One tensor as a safetensors header describes it."""

    dtype: str  # safetensors' name: F32, BF16, I32, BOOL, ...
    shape: tuple[int, ...]
    path: Path
    name: str  # its name in the file (GPT-2's may lack the 'transformer.' prefix)


def read_header(files: list[Path], arch: str) -> dict[str, Stored]:
    """Each tensor of the files under transformers' full name, from the safetensors headers alone (no weight
    is read)."""
    header: dict[str, Stored] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if name in header:
                    raise GptlabError(f"{name} is in two weight files ({header[name].path.name} and {path.name})")
                piece = f.get_slice(name)
                header[name] = Stored(piece.get_dtype(), tuple(piece.get_shape()), path, name)
    return hf_gpt2.with_prefix(header) if arch == "gpt2" else header


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name (transformers' names) and shape that cfg implies: one block's, built on the meta
    device from the one export map, repeated for each block; nothing is allocated."""
    one = build_model(replace(cfg, n_layer=1), "meta")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, tensor in hf_state_dict(one).items():  # type: ignore[arg-type]  # a GPT: arch=gpt is imported
        for i in range(cfg.n_layer) if LAYER.match(name) else [None]:
            shapes[name if i is None else LAYER.sub(rf"\g<1>.{i}.", name)] = tuple(tensor.shape)
    return shapes


def check_weights(cfg: ModelConfig, header: dict[str, Stored], arch: str) -> list[str]:
    """Refuse weights that do not match what config.json implies, tensor by tensor (a missing one, one with no
    place, another shape, integers or booleans), before any memory is spent on them; return the names to read."""
    expected = expected_shapes(cfg)
    if cfg.tie_embeddings:  # some tied checkpoints store the head too: read, then checked equal to the embedding
        expected.setdefault("lm_head.weight", (cfg.vocab_size, cfg.n_embd))
    buffers = re.compile(hf_gpt2.BUFFERS if arch == "gpt2" else hf_llama.BUFFERS)
    extra = sorted(n for n in header if n not in expected and not buffers.fullmatch(n))
    if extra:
        raise GptlabError(
            f"the weights hold {len(extra):,} tensor(s) that config.json has no place for ({', '.join(extra[:3])}"
            f"{', ...' if len(extra) > 3 else ''}): config.json does not describe these weights"
        )
    for name, shape in expected.items():
        if name not in header:
            if name == "lm_head.weight" and cfg.tie_embeddings:
                continue
            raise GptlabError(f"the checkpoint has no {name}, which config.json implies")
        stored = header[name]
        if stored.shape != shape:
            raise GptlabError(f"{name} is {list(stored.shape)} in the weights, but config.json implies {list(shape)}")
        if stored.dtype not in FLOATS:
            raise GptlabError(f"{name} holds {stored.dtype} values; only floating-point weights are imported")
    return [name for name in expected if name in header]


def read_hf_weights(src: Path, cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors that cfg uses, as float32, once their names, shapes and dtypes are checked
    against cfg from the files' headers; every value finite."""
    try:
        files = weight_files(src)
        header = read_header(files, arch)
        wanted = check_weights(cfg, header, arch)
        tensors: dict[str, torch.Tensor] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for name in (n for n in wanted if header[n].path == path):
                    tensor = f.get_tensor(header[name].name).float()  # gptlab keeps float32 weights on the CPU
                    if not torch.isfinite(tensor).all():
                        raise GptlabError(f"{name} holds NaN or infinite values")
                    tensors[name] = tensor
    except (SafetensorError, OSError, ValueError) as exc:
        raise GptlabError(f"cannot read the weights in {src}: {str(exc).splitlines()[0]}") from None
    return tensors


def import_checkpoint(
    src: str | Path, out: str | Path, data: str | Path | None = None, overrides: list[str] | None = None
) -> Path:
    """Write the checkpoint in src as the gptlab run out; return out."""
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise GptlabError(f"{src} is not a transformers checkpoint directory (no config.json)")
    # A run without a checkpoint (an import killed before this one staged its output) may be replaced.
    check_output_dir(out, [("DIR", src), ("--data", data)], "a gptlab run without a checkpoint", _replaceable)
    hf = read_json_object(inside(src, "config.json"), 1 * MiB)
    cfg = RunConfig(model=model_config_from_hf(hf), preset="imported")
    apply_overrides(cfg, [o if o.startswith("train.") else f"train.{o}" for o in overrides or []])
    cfg.validate()
    if not (src / "tokenizer.json").is_file():
        raise GptlabError(f"{src} has no tokenizer.json (a fast tokenizer file is needed)")
    tokenizer = HuggingFaceTokenizer.from_file(inside(src, "tokenizer.json"), cfg.model.vocab_size)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise GptlabError(
            f"the tokenizer has {tokenizer.vocab_size:,} ids but the model only "
            f"{cfg.model.vocab_size:,} (vocab_size in config.json)"
        )
    arch = hf["model_type"]  # model_config_from_hf accepted it
    theirs = read_hf_weights(src, cfg.model, arch)
    ours = (hf_gpt2.from_gpt2_state_dict if arch == "gpt2" else hf_llama.from_llama_state_dict)(cfg.model, theirs)
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
