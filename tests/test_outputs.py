"""What a command will never overwrite (outputs.py), what small hostile files cannot make it hold in
memory, and what a killed export or import leaves for the next one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from conftest import assert_clean_error, cli_in_process
from gptlab.errors import GptlabError
from gptlab.fileio import bounded_lines

POEMS = [
    {"title": "春曉", "author": "孟浩然", "paragraphs": ["春眠不覺曉，處處聞啼鳥。", "夜來風雨聲，花落知多少。"]},
    {"title": "登鸛雀樓", "author": "王之渙", "paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]},
    {"title": "靜夜思", "author": "李白", "paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]},
    {
        "title": "早發白帝城",
        "author": "李白",
        "paragraphs": ["朝辭白帝彩雲間，千里江陵一日還。", "兩岸猿聲啼不住，輕舟已過萬重山。"],
    },
]


def digest(path: Path) -> str:
    """A hash of a file, or of every file under a directory (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted([path] if path.is_file() else path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path.parent)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def poems(tmp_path) -> Path:
    path = tmp_path / "poems.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in POEMS), encoding="utf-8")
    return path


@pytest.fixture
def foreign(tmp_path) -> Path:
    """A directory of the user's that gptlab did not make: files named as a run's and a dataset's."""
    path = tmp_path / "mine"
    path.mkdir()
    for name in ("notes.txt", "config.json", "tokenizer.json"):
        (path / name).write_text("the user's own " + name)
    return path


# --- A: never over an input, never into a foreign directory, never two outputs on one path ---------


def test_train_refuses_a_foreign_directory_and_its_own_dataset(char_dataset, foreign, tmp_path, capsys):
    before = digest(foreign)
    proc = cli_in_process(capsys, "train", "--data", char_dataset, "--out", foreign, "max_steps=1")
    assert_clean_error(proc, "non-empty directory that is not a gptlab run")
    assert digest(foreign) == before
    # --out the dataset itself: named as the input it is, not as a dataset being prepared.
    data = tmp_path / "data"
    shutil.copytree(char_dataset, data)
    before = digest(data)
    proc = cli_in_process(capsys, "train", "--data", data, "--out", data, "max_steps=1")
    assert_clean_error(proc, "what this command reads (--data")
    assert "prepare" not in proc.stderr and digest(data) == before


def test_finetune_refuses_a_foreign_directory(tiny_run, poems, foreign, capsys):
    before = digest(foreign)
    proc = cli_in_process(capsys, "finetune", "--from", tiny_run, "--data", poems, "--out", foreign)
    assert_clean_error(proc, "not a gptlab run")
    assert digest(foreign) == before


def test_prepare_never_builds_a_dataset_over_its_own_corpus(char_dataset, shakespeare_txt, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(char_dataset, data)
    before = digest(data)
    assert_clean_error(cli_in_process(capsys, "prepare", data, "--out", data), "what this command reads")
    assert digest(data) == before
    # Nor inside a corpus directory, nor into one that holds the corpus.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(shakespeare_txt, corpus / "a.txt")
    assert_clean_error(cli_in_process(capsys, "prepare", corpus, "--out", corpus / "ds"), "inside")
    assert_clean_error(cli_in_process(capsys, "prepare", corpus / "a.txt", "--out", corpus), "holds")
    assert sorted(p.name for p in corpus.iterdir()) == ["a.txt"]


def test_prepare_refuses_a_foreign_directory_and_rebuilds_its_own(shakespeare_txt, foreign, tmp_path, capsys):
    before = digest(foreign)
    assert_clean_error(cli_in_process(capsys, "prepare", shakespeare_txt, "--out", foreign), "not a dataset")
    assert digest(foreign) == before
    out = tmp_path / "ds"
    for _ in range(2):  # a dataset directory is rebuilt in place
        assert cli_in_process(capsys, "prepare", shakespeare_txt, "--out", out, "--workers", "1").returncode == 0


def test_couplets_and_poem_data_never_write_over_their_input(poems, tmp_path, capsys):
    before = digest(poems)
    assert_clean_error(cli_in_process(capsys, "couplets", poems, "--out", poems), "what this command reads")
    link = tmp_path / "link.jsonl"
    link.symlink_to(poems)  # the same file under another name
    assert_clean_error(cli_in_process(capsys, "couplets", poems, "--out", link), "what this command reads")
    assert_clean_error(cli_in_process(capsys, "poem-data", poems, "--instructions", poems), "what this command reads")
    assert_clean_error(cli_in_process(capsys, "poem-data", poems, "--preferences", link), "what this command reads")
    assert digest(poems) == before
    # Two outputs on one path: the second would replace the first.
    both = tmp_path / "both.jsonl"
    proc = cli_in_process(capsys, "poem-data", poems, "--instructions", both, "--preferences", both)
    assert_clean_error(proc, "--instructions and --preferences name the same file")
    assert not both.exists()
    ok = cli_in_process(capsys, "couplets", poems, "--out", tmp_path / "c.jsonl")
    assert ok.returncode == 0, ok.stderr


def test_export_import_sweep_and_plot_refuse_their_inputs(tiny_run, foreign, tmp_path, capsys):
    before = digest(tiny_run)
    assert_clean_error(cli_in_process(capsys, "export", tiny_run, "--out", tiny_run), "what this command reads")
    assert_clean_error(cli_in_process(capsys, "export", tiny_run, "--out", tiny_run / "hf"), "inside")
    assert_clean_error(cli_in_process(capsys, "import", foreign, "--out", foreign), "what this command reads")
    proc = cli_in_process(capsys, "plot", tiny_run, "--out", tiny_run / "checkpoints")
    assert_clean_error(proc, "unsupported image type")
    assert digest(tiny_run) == before
    assert_clean_error(cli_in_process(capsys, "sweep", "--out", foreign), "not a sweep's directory")


# --- B: bounded reads --------------------------------------------------------------------------------


def test_a_line_that_never_ends_is_one_line_not_all_memory(tmp_path, capsys):
    endless = tmp_path / "endless.jsonl"
    endless.symlink_to("/dev/zero")
    assert_clean_error(cli_in_process(capsys, "couplets", endless, "--out", tmp_path / "c.jsonl"), "line 1 is longer")
    proc = cli_in_process(capsys, "prepare", endless, "--out", tmp_path / "ds")
    assert_clean_error(proc, "line 1 is longer")
    # The reader itself: a bound, and every line under it as it was.
    with open(endless, "rb") as fh, pytest.raises(GptlabError, match="line 1 is longer than 1,000 bytes"):
        next(bounded_lines(fh, endless, limit=1000))
    text = tmp_path / "short.jsonl"
    text.write_bytes(b"a\nbb\n\nccc")
    with open(text, "rb") as fh:
        assert list(bounded_lines(fh, text, limit=4)) == [b"a\n", b"bb\n", b"\n", b"ccc"]


def test_a_json_file_too_large_to_read_whole_is_refused(tmp_path, monkeypatch, capsys):
    import gptlab.data.corpora as corpora

    monkeypatch.setattr(corpora, "MAX_JSON_BYTES", 1000)
    endless = tmp_path / "endless.json"
    endless.symlink_to("/dev/zero")
    assert_clean_error(cli_in_process(capsys, "couplets", endless, "--out", tmp_path / "c.jsonl"), "write it as .jsonl")


def test_out_of_memory_outside_training_gives_no_training_advice(shakespeare_txt, tmp_path, monkeypatch, capsys):
    import gptlab.data.prepare as prepare

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(prepare, "prepare", no_memory)
    proc = cli_in_process(capsys, "prepare", shakespeare_txt, "--out", tmp_path / "ds")
    assert_clean_error(proc, "out of memory")
    assert "batch_size" not in proc.stderr


@pytest.mark.parametrize("template", ["{title:>99999999}", "{title:*^0100000}", "{title:{author}}"])
def test_a_template_cannot_make_every_prompt_huge(poems, tmp_path, template, capsys):
    out = tmp_path / "sft.jsonl"
    assert_clean_error(cli_in_process(capsys, "poem-data", poems, "--instructions", out, "--template", template))
    assert not out.exists()


def test_finetune_data_with_an_overlong_line_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    import gptlab.fileio as fileio

    monkeypatch.setattr(fileio, "MAX_LINE_BYTES", 1000)
    endless = tmp_path / "sft.jsonl"
    endless.write_text(json.dumps({"prompt": "x" * 2000, "response": "y"}) + "\n")
    proc = cli_in_process(capsys, "finetune", "--from", tiny_run, "--data", endless, "--out", tmp_path / "sft")
    assert_clean_error(proc, "line 1 is longer")


# --- C: what a killed export or import leaves, and what an export looks like -----------------------


DEAD_PID = 99_999_999  # above any Linux pid_max: no process has it


def test_export_sweeps_a_killed_exports_staging_and_writes_plain_modes(tiny_run, tmp_path, capsys):
    out = tmp_path / "exported"
    stale = [tmp_path / f".exported.export-{DEAD_PID}", tmp_path / f".exported.export-{DEAD_PID}.abcd"]
    for path in stale:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".exported.export-{os.getppid()}"  # a live process's staging is left alone
    live.mkdir()
    proc = cli_in_process(capsys, "export", tiny_run, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in stale) and live.is_dir()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_a_char_export_has_an_end_of_text_token(tiny_run, tmp_path, capsys):
    from transformers import AutoTokenizer, GenerationConfig

    from gptlab.tokenizers import load_tokenizer

    out = tmp_path / "exported"
    assert cli_in_process(capsys, "export", tiny_run, "--out", out).returncode == 0
    newline = load_tokenizer(tiny_run / "tokenizer.json").encode("\n")[0]
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    generation = GenerationConfig.from_pretrained(out, local_files_only=True)
    assert tok.eos_token_id == generation.eos_token_id == generation.pad_token_id == newline
    assert tok("ROMEO:\nHi").input_ids == load_tokenizer(tiny_run / "tokenizer.json").encode("ROMEO:\nHi")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    from gptlab.interop.export import export_run

    return export_run(tiny_run, tmp_path_factory.mktemp("export") / "hf")


def test_a_killed_import_leaves_nothing_and_can_be_run_again(exported, tmp_path, monkeypatch, capsys):
    import gptlab.interop.import_hf as import_hf

    out = tmp_path / "imported"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(import_hf, "publish_checkpoint", killed)
    assert cli_in_process(capsys, "import", exported, "--out", out).returncode == 130
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # What an import killed by an older gptlab left: a run's config and tokenizer, no weights.
    out.mkdir()
    shutil.copy(exported / "tokenizer.json", out / "tokenizer.json")
    (out / "config.json").write_text(json.dumps({"model": {}, "train": {}}))
    proc = cli_in_process(capsys, "import", exported, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert cli_in_process(capsys, "sample", out, "--max-new-tokens", "3", "--seed", "1").returncode == 0
    # A run with a checkpoint is never replaced.
    before = digest(out)
    assert_clean_error(cli_in_process(capsys, "import", exported, "--out", out), "without a checkpoint")
    assert digest(out) == before


def test_the_default_preset_trains_on_chinese_text(tmp_path, capsys):
    corpus = tmp_path / "poems.txt"
    corpus.write_text("\n\n".join("\n".join(p["paragraphs"]) for p in POEMS * 40), encoding="utf-8")
    data = tmp_path / "data"
    assert cli_in_process(capsys, "prepare", corpus, "--out", data, "--workers", "1").returncode == 0
    args = ["n_layer=1", "n_head=1", "n_embd=16", "block_size=16", "batch_size=2", "eval_batches=1", "eval_interval=1"]
    proc = cli_in_process(capsys, "train", "--data", data, "--out", tmp_path / "run", "--max-steps", "1", *args)
    assert proc.returncode == 0, proc.stderr
    assert "sample prompt 'ROMEO:' is not in this tokenizer's vocabulary" in proc.stdout
    # A prompt the user chose is refused as before.
    proc = cli_in_process(capsys, "train", "--data", data, "--out", tmp_path / "r2", "sample_prompt=ROMEO", *args)
    assert_clean_error(proc, "not in this char tokenizer's vocabulary")
