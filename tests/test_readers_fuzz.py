"""Property-based tests of the readers of files someone else wrote: a checkpoint's config.json, tokenizer.json
and weights index, and JSONL records. Random and mutated JSON (wrong kinds, huge and non-finite numbers,
deep nesting, any Unicode, lone surrogates) gives a result or a GptlabError, never another exception.
Bounded (50 examples each, no deadline) so the file runs in seconds."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from gptlab.config import ModelConfig
from gptlab.data.corpora import SkipReport, iter_records
from gptlab.errors import GptlabError
from gptlab.interop import import_hf
from gptlab.interop.architectures import hf_config, model_config_from_hf
from gptlab.interop.export import hf_state_dict
from gptlab.interop.hf_tokenizer import to_hf_tokenizer
from gptlab.jsonfile import read_json, read_json_object
from gptlab.model import build_model
from gptlab.posttrain.records import json_lines
from gptlab.tokenizers import CharTokenizer
from gptlab.tokenizers.huggingface import HuggingFaceTokenizer

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = "hello world\n"
SHAPE = ModelConfig(vocab_size=9, n_layer=1, n_head=2, n_embd=8, block_size=8)

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**7, 10**9, 0.5, 1e308]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def dumps(value) -> str:
    """JSON text, NaN and Infinity included (as Python writes them), lone surrogates escaped."""
    return json.dumps(value)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def mutated(base: dict) -> st.SearchStrategy[dict]:
    """base with some of its keys given random values, removed, or new keys added."""
    keys = sorted(base)
    changes = st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), values | st.just(None), max_size=4)
    return st.builds(
        lambda c, drop: {k: v for k, v in (base | c).items() if k not in drop},
        changes,
        st.sets(st.sampled_from(keys), max_size=2),
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    tok = CharTokenizer.train([TEXT])
    cfg = ModelConfig(**{**vars(SHAPE), "vocab_size": tok.vocab_size})
    save_file(hf_state_dict(build_model(cfg)), str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(hf_config(cfg, None, None)))
    to_hf_tokenizer(tok).save(str(root / "tokenizer.json"))
    return root


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@FUZZ
@given(st.data())
def test_config_json_gives_a_model_config_or_one_error(checkpoint, data):
    base = json.loads((checkpoint / "config.json").read_text())
    text = data.draw(
        st.one_of(
            mutated(base).map(dumps),
            mutated(base | {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1}).map(dumps),
            values.map(dumps),
            st.integers(1, 5000).map(lambda d: '{"model_type": "gpt2", "x": ' + deep(d) + "}"),
            st.text(max_size=50),
        )
    )
    header = import_hf.read_header([checkpoint / "model.safetensors"], "gpt2")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg = model_config_from_hf(read_json_object(write(Path(tmp) / "config.json", text)))
            arch = "gpt2" if cfg.position == "learned" else "llama"
            assert import_hf.check_weights(cfg, header, arch)
        except GptlabError as exc:
            assert "\n" not in str(exc)


@FUZZ
@given(st.data())
def test_tokenizer_json_gives_a_tokenizer_or_one_error(checkpoint, data):
    base = json.loads((checkpoint / "tokenizer.json").read_text())
    model = base["model"]
    text = data.draw(
        st.one_of(
            mutated(base).map(dumps),
            mutated(model).map(lambda m: dumps(base | {"model": m})),
            values.map(dumps),
            st.integers(1, 5000).map(lambda d: '{"model": ' + deep(d) + ', "added_tokens": []}'),
        )
    )
    sample = data.draw(st.text(max_size=20))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            tok = HuggingFaceTokenizer.from_file(write(Path(tmp) / "tokenizer.json", text))
            ids = tok.encode(sample)
            assert isinstance(tok.decode(ids), str)
        except GptlabError as exc:
            assert "\n" not in str(exc)


@FUZZ
@given(
    st.one_of(
        values,
        st.dictionaries(st.text(max_size=8), st.text(max_size=30) | values, max_size=4).map(
            lambda m: {"weight_map": m}
        ),
        st.sampled_from(["/etc/passwd", "../x", "..", ".", "", "/dev/zero", "model.safetensors", "a\x00b"]).map(
            lambda f: {"weight_map": {"w": f}}
        ),
    )
)
def test_a_weights_index_names_files_inside_or_is_one_error(checkpoint, index):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "model.safetensors").symlink_to(checkpoint / "model.safetensors")  # a link out: never read
        write(src / "model.safetensors.index.json", dumps(index))
        try:
            files = import_hf.weight_files(src)
            assert all(f.is_relative_to(src.resolve()) and f.is_file() for f in files)
        except GptlabError as exc:
            assert "\n" not in str(exc)


@FUZZ
@given(st.lists(st.one_of(values.map(dumps), st.text(max_size=30), st.integers(1, 3000).map(deep)), max_size=6))
def test_jsonl_records_are_records_or_one_error(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "r.jsonl", "\n".join(lines) + "\n")
        try:
            records = list(iter_records([str(path)], SkipReport()))
            assert all(json.dumps(r, allow_nan=False) for r in records)  # finite, plain JSON again
        except GptlabError as exc:
            assert "\n" not in str(exc)
        report = SkipReport()
        for record in json_lines(path, report):  # finetune's reader: a bad line is skipped, never fatal
            json.dumps(record, allow_nan=False).encode("utf-8")


def test_the_reader_bounds_size_before_reading(tmp_path):
    big = write(tmp_path / "big.json", "[" + "0," * 600_000 + "0]")
    with pytest.raises(GptlabError, match="larger than 1 MiB"):
        read_json(big, max_bytes=1 << 20)
    assert len(read_json(big)) == 600_001
    if Path("/dev/zero").exists():  # a device that never ends is read no further than the bound
        with pytest.raises(GptlabError, match="larger than"):
            read_json("/dev/zero", max_bytes=1 << 20)
