import json
import sys
from pathlib import Path

import numpy as np
import pytest

from gptlab.data import corpora
from gptlab.data import prepare as prepare_module
from gptlab.data.loader import BatchLoader, Dataset
from gptlab.data.prepare import prepare
from gptlab.errors import GptlabError
from gptlab.tokenizers import load_tokenizer


def all_ids(data_dir, split):
    """A split's ids, its shards concatenated in meta.json's order."""
    meta = json.loads((data_dir / "meta.json").read_text())
    return np.concatenate(
        [np.fromfile(data_dir / name, dtype=meta["dtype"]) for name in meta["splits"][split]["files"]]
    )


def dir_bytes(data_dir):
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir())}


@pytest.fixture(scope="module")
def poems(tmp_path_factory, tang_jsonl):
    path = tmp_path_factory.mktemp("poems") / "poems.jsonl"
    path.write_text("\n".join(tang_jsonl.read_text(encoding="utf-8").splitlines()[:400]), encoding="utf-8")
    return path


def test_documents_are_separated_by_end_of_text(bpe_dataset, poems):
    meta = json.loads((bpe_dataset / "meta.json").read_text())
    tok = load_tokenizer(bpe_dataset / "tokenizer.json")
    assert meta["tokenizer"] == {"kind": "bpe", "vocab_size": 600}
    for split in ("train", "val"):
        ids = all_ids(bpe_dataset, split)
        stat = meta["splits"][split]
        assert len(ids) == stat["tokens"]
        # One end-of-text between consecutive documents, none from the texts themselves.
        assert int((ids == tok.eot_id).sum()) == stat["documents"] - 1
        docs = tok.decode(ids.tolist()).split("<|endoftext|>")
        assert sum(len(d) for d in docs) == stat["chars"]
        assert sum(len(d.encode()) for d in docs) == stat["bytes"]
    assert meta["splits"]["val"]["documents"] >= 1


def test_sharded_equals_single_shard_and_workers_change_nothing(tmp_path, shakespeare_txt, poems, monkeypatch):
    monkeypatch.setattr(prepare_module, "MIN_BYTES_PER_WORKER", 0)  # real worker processes, small corpus
    specs = [str(shakespeare_txt), str(poems)]
    single = tmp_path / "single"
    prepare(specs, single, "bpe", tokenizer_options={"vocab_size": 400}, progress=False)
    sharded = tmp_path / "sharded"
    prepare(specs, sharded, "bpe", tokenizer_options={"vocab_size": 400}, shard_tokens=5_000, workers=2, progress=False)
    meta = json.loads((sharded / "meta.json").read_text())
    assert len(meta["splits"]["train"]["files"]) > 5
    assert meta["splits"]["train"]["files"][0] == "train-00000.bin"
    for split in ("train", "val"):
        assert np.array_equal(all_ids(single, split), all_ids(sharded, split))
    assert (single / "tokenizer.json").read_bytes() == (sharded / "tokenizer.json").read_bytes()
    # Re-running into the sharded directory with one shard leaves no stale shard behind.
    prepare(specs, sharded, "bpe", tokenizer_options={"vocab_size": 400}, progress=False)
    assert dir_bytes(sharded) == dir_bytes(single)


def test_rerun_is_byte_identical(tmp_path, poems):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        prepare([str(poems)], out, "bpe", tokenizer_options={"vocab_size": 300}, seed=5, progress=False)
    assert dir_bytes(a) == dir_bytes(b)
    c = tmp_path / "c"
    prepare([str(poems)], c, "bpe", tokenizer_options={"vocab_size": 300}, seed=6, progress=False)
    assert (c / "val.bin").read_bytes() != (a / "val.bin").read_bytes()  # the seed picks val


def test_chunked_reading_encodes_like_the_whole_text(tmp_path, shakespeare_txt, monkeypatch):
    # Small blocks and chunks: the file is read in hundreds of pieces, which must not change an id.
    monkeypatch.setattr(corpora, "READ_BYTES", 997)
    monkeypatch.setattr(corpora, "CHUNK_CHARS", 5000)
    text = shakespeare_txt.read_text(encoding="utf-8")[:200_000]
    (tmp_path / "s.txt").write_text(text, encoding="utf-8")
    chunks = list(corpora.iter_chunks([str(tmp_path / "s.txt")], corpora.SkipReport()))
    assert len(chunks) > 30 and "".join(c.text for c in chunks) == text
    out = tmp_path / "out"
    prepare([str(tmp_path / "s.txt")], out, "bpe", tokenizer_options={"vocab_size": 400}, progress=False)
    tok = load_tokenizer(out / "tokenizer.json")
    ids = np.concatenate([all_ids(out, "train"), all_ids(out, "val")])
    train_chars = json.loads((out / "meta.json").read_text())["splits"]["train"]["chars"]
    assert ids.tolist() == tok.encode(text[:train_chars]) + tok.encode(text[train_chars:])


def test_crlf_bom_and_multibyte_characters_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "READ_BYTES", 7)
    text = "第一行\r\n第二行 é\r\nthird line\r\n" * 20
    (tmp_path / "t.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    chunks = list(corpora.iter_chunks([str(tmp_path / "t.txt")], corpora.SkipReport()))
    assert "".join(c.text for c in chunks) == text.replace("\r\n", "\n")


def test_undecodable_bytes_are_reported_with_their_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "READ_BYTES", 10)
    src = tmp_path / "corpus"  # beside --out: a command never writes inside what it reads
    src.mkdir()
    (src / "good.txt").write_text("fine text\n")
    (src / "bad.txt").write_bytes("é".encode() * 20 + b"\xff tail")
    with pytest.raises(GptlabError, match=r"bad.txt is not UTF-8 text \(undecodable byte at offset 40\)"):
        prepare([str(src)], tmp_path / "out", progress=False)
    (src / "bad.txt").unlink()
    (src / "bad.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xe4\xb8"}\n')
    with pytest.raises(GptlabError, match="bad.jsonl line 2 is not UTF-8"):
        prepare([str(src)], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_empty_files_among_good_ones_are_skipped_and_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first document\n")
    (src / "b.txt").write_text("")
    (src / "c.txt").write_text(" \n\t\n")
    (src / "d.jsonl").write_text('{"text": "second"}\n\n{"text": "   "}\n')
    result = prepare([str(src)], tmp_path / "out", val_fraction=0, progress=False)
    assert result.skipped.reasons == {"empty text file": 2, "record with empty text": 1}
    assert result.meta["splits"]["train"]["documents"] == 2


def test_text_field_picks_the_field_and_a_missing_one_is_named(tmp_path):
    records = [{"body": f"record {i} body", "text": f"not this {i}"} for i in range(10)]
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    out = tmp_path / "out"
    prepare([str(tmp_path / "r.jsonl")], out, text_field="body", val_fraction=0, progress=False)
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.decode(all_ids(out, "train").tolist()) == "\n\n".join(r["body"] for r in records)
    with pytest.raises(GptlabError, match="has no text.*skipped 10: record without a string 'content' field"):
        prepare([str(tmp_path / "r.jsonl")], tmp_path / "out2", text_field="content", progress=False)


def test_hf_corpus_without_datasets_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(GptlabError, match="needs the `datasets` library"):
        prepare(["hf:roneneldan/TinyStories"], tmp_path / "out", progress=False)
    with pytest.raises(GptlabError, match="names no dataset"):
        prepare(["hf:"], tmp_path / "out", progress=False)


def test_bad_settings_are_refused(tmp_path, poems):
    with pytest.raises(GptlabError, match="cannot be set for the pretrained"):
        prepare([str(poems)], tmp_path / "o", "cl100k_base", tokenizer_options={"vocab_size": 1000})
    with pytest.raises(GptlabError, match="at least 1"):
        prepare([str(poems)], tmp_path / "o", workers=0)


def test_a_saved_tokenizer_is_reused_as_it_is(tmp_path, bpe_dataset, poems):
    out = tmp_path / "again"
    prepare([str(poems)], out, str(bpe_dataset), progress=False)
    assert (out / "tokenizer.json").read_bytes() == (bpe_dataset / "tokenizer.json").read_bytes()


def two_far_apart_shards(path: Path) -> Dataset:
    """A train split of two shards of consecutive numbers far apart (0..99, 1000..1039): a window
    spanning both would hold a jump."""
    (path / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": ["a", "b"]}))
    np.arange(0, 100, dtype=np.uint16).tofile(path / "train-00000.bin")
    np.arange(1000, 1040, dtype=np.uint16).tofile(path / "train-00001.bin")
    split = {"files": ["train-00000.bin", "train-00001.bin"], "tokens": 140, "documents": 1, "chars": 1, "bytes": 1}
    (path / "meta.json").write_text(json.dumps({"dtype": "uint16", "splits": {"train": split}}))
    return Dataset(path)


def test_loader_never_draws_a_window_across_shards(tmp_path):
    loader = BatchLoader(two_far_apart_shards(tmp_path), "train", batch_size=64, block_size=16, seed=0)
    starts = set()
    for _ in range(20):
        batch = loader.next_batch()
        x, y = batch.inputs, batch.targets
        window = np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1)
        assert (np.diff(window, axis=1) == 1).all()
        starts.update(window[:, 0].tolist())
    # Both shards are drawn from, up to their last full window and no further.
    assert min(starts) == 0 and max(s for s in starts if s < 1000) == 100 - 17
    assert any(s >= 1000 for s in starts) and max(starts) == 1040 - 17


def test_cli_prepare_bpe_reports_progress_and_refuses_bad_flags(tmp_path, poems):
    from conftest import assert_clean_error, run_cli

    out = tmp_path / "cli"
    proc = run_cli("prepare", poems, "--tokenizer", "bpe", "--vocab-size", "300", "--out", out, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "vocabulary size: 300 (bpe tokenizer, uint16 ids" in proc.stdout
    # Not a terminal: the progress bar becomes log lines with bytes, tokens and throughput.
    assert "encoding:" in proc.stderr and "tokens (" in proc.stderr and "MB/s" in proc.stderr
    assert_clean_error(
        run_cli("prepare", poems, "--tokenizer", "bpe", "--vocab-size", "100", "--out", out), "too small"
    )
    assert_clean_error(
        run_cli("prepare", poems, "--tokenizer", "o200k_base", "--vocab-size", "1000", "--out", out),
        "vocab_size cannot be set",
    )
    assert json.loads((out / "meta.json").read_text())["tokenizer"]["vocab_size"] == 300  # still there
