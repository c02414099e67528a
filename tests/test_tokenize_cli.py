import json
import subprocess
import sys

import pytest

from conftest import assert_clean_error, cli_env, run_cli
from gptlab.tokenizers import BPETokenizer, load_tokenizer


def test_pieces_in_order_with_ids_and_counts(bpe_dataset):
    text = "ROMEO: wherefore art thou?\n床前明月光"
    proc = run_cli("tokenize", bpe_dataset, text, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    tok = load_tokenizer(bpe_dataset / "tokenizer.json")
    ids = tok.encode(text)
    assert [p["id"] for p in info["tokens"]] == ids and info["count"] == len(ids)
    assert b"".join(bytes.fromhex(p["hex"]) for p in info["tokens"]) == text.encode("utf-8")
    assert info["chars"] == len(text) and info["bytes"] == len(text.encode("utf-8"))
    assert info["bytes_per_token"] == pytest.approx(info["bytes"] / len(ids))
    assert info["chars_per_token"] == pytest.approx(len(text) / len(ids))


def test_terminal_output_is_readable_for_chinese_and_partial_bytes(tmp_path, tang_jsonl):
    poems = [json.loads(line) for line in tang_jsonl.read_text(encoding="utf-8").splitlines()[:300]]
    tok = BPETokenizer.train(["\n".join(p["paragraphs"]) for p in poems], vocab_size=400)
    tok.save(tmp_path / "tokenizer.json")
    whole = next(c for c in "不人山一无风日云天" if len(tok.encode(c)) == 1)  # a character learned whole
    proc = run_cli("tokenize", "--tokenizer", tmp_path / "tokenizer.json", f"{whole}\U00020000\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"'{whole}'" in lines[2]
    # A character never seen in training comes out as 4 byte pieces, each marked, then '\n' escaped.
    assert [line.split()[2] for line in lines[3:7]] == ["'\\xf0'", "'\\xa0'", "'\\x80'", "'\\x80'"]
    assert all("(part of a character)" in line for line in lines[3:7])
    assert lines[7].split()[2] == "'\\n'"
    assert lines[-1].startswith("6 tokens, 3 characters, 8 bytes: 0.50 characters and 1.33 bytes per token")


def test_char_dataset_and_stdin(char_dataset):
    proc = subprocess.run(
        [sys.executable, "-m", "gptlab", "tokenize", str(char_dataset), "-", "--json"],
        input="To be",
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert [p["piece"] for p in info["tokens"]] == list("To be") and info["chars_per_token"] == 1.0


@pytest.mark.parametrize(
    "args, needles",
    [
        (["tokenize", "{tmp}/nope", "hi"], ["run not found"]),
        (["tokenize", "{tmp}", "hi"], ["holds no tokenizer.json"]),
        (["tokenize", "--tokenizer", "bpe", "hi"], ["learned from a corpus", "gptlab prepare"]),
        (["tokenize", "--tokenizer", "wordpiece", "hi"], ["unknown tokenizer"]),
        (["tokenize", "hi"], ["takes --tokenizer SPEC TEXT or RUN TEXT"]),
        (["tokenize", "--tokenizer", "gpt2", "{data}", "hi"], ["takes --tokenizer SPEC TEXT or RUN TEXT"]),
        (["tokenize", "{data}", "Zebra ∑"], ["not in this char tokenizer's vocabulary"]),
    ],
)
def test_bad_inputs(args, needles, tmp_path, char_dataset):
    args = [a.format(tmp=tmp_path, data=char_dataset) for a in args]
    assert_clean_error(run_cli(*args, timeout=120), *needles)
