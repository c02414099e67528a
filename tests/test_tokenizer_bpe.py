import json
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from gptlab.errors import GptlabError
from gptlab.tokenizers import BPETokenizer, CharTokenizer, build_tokenizer, load_tokenizer
from gptlab.tokenizers.bpe import EOT, byte_to_char

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@lru_cache(maxsize=1)
def small_bpe() -> BPETokenizer:
    """BPE learned from real English and Chinese text (cached: hypothesis reuses it)."""
    english = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    poems = [json.loads(line) for line in (SHARED / "tang_poems.jsonl").read_text(encoding="utf-8").splitlines()[:200]]
    chinese = ["\n".join(p["paragraphs"]) for p in poems]
    return BPETokenizer.train([english, *chinese], vocab_size=700)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_unicode(text):
    tok = small_bpe()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eot_id not in ids  # special tokens never come out of plain text


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_char_round_trips_any_unicode(text):
    tok = CharTokenizer.train([text])
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(), st.text())
def test_end_of_text_written_in_text_is_plain_text(before, after):
    tok = small_bpe()
    text = before + EOT + after
    ids = tok.encode(text)
    assert tok.eot_id not in ids and tok.decode(ids) == text
    assert tok.encode_array(text).tolist() == ids


def test_bpe_learns_words_and_round_trips_chinese(tang_jsonl):
    tok = small_bpe()
    assert tok.vocab_size == 700 and tok.eot_id == 699 and tok.special_tokens == {EOT: 699}
    assert len(tok.encode(" the")) == 1 and tok.id_to_piece(tok.encode(" the")[0]) == " the"
    poem = json.loads(tang_jsonl.read_text(encoding="utf-8").splitlines()[5000])  # not in training
    text = "\n".join(poem["paragraphs"])
    assert tok.decode(tok.encode(text)) == text
    # A Chinese character unseen in training falls apart into its UTF-8 bytes, shown as \xNN.
    ids = tok.encode("\U00020000")
    assert b"".join(tok.token_bytes(i) for i in ids) == "\U00020000".encode()
    assert all(tok.id_to_piece(i).startswith("\\x") for i in ids)


def test_same_corpus_and_settings_give_the_same_vocabulary(shakespeare_txt):
    text = shakespeare_txt.read_text(encoding="utf-8")[:300_000]
    chunks = [text[i : i + 10_000] for i in range(0, len(text), 10_000)]
    a = BPETokenizer.train(iter(chunks), vocab_size=500)
    b = BPETokenizer.train(iter(chunks), vocab_size=500)
    assert a.to_dict() == b.to_dict()
    c = BPETokenizer.train(iter(chunks), vocab_size=400)
    assert c.pieces == a.pieces[:399]  # fewer merges: the same ones, learned in the same order


def test_byte_notation_matches_the_tokenizers_library():
    mapping = byte_to_char()
    assert sorted(mapping.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for text in ["\n\t !~", "é¡¬®ÿ", "中文", "\U0001f600", "\x00\x7f"]:
        ((piece, _),) = byte_level.pre_tokenize_str(text)
        assert piece == "".join(mapping[b] for b in text.encode("utf-8"))


def test_save_and_load(tmp_path):
    tok = small_bpe()
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    text = "ROMEO: 床前明月光 <|endoftext|>"
    assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["kind"] == "bpe" and "Ġthe" in data["pieces"]  # GPT-2 byte notation, readable


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(GptlabError, match="too small"):
        BPETokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(GptlabError, match="unknown tokenizer"):
        build_tokenizer("wordpiece")
    with pytest.raises(GptlabError, match="takes no :PATH"):
        build_tokenizer("bpe:/tmp/x")
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "bpe", "pieces": ["a", "a"]}))
    with pytest.raises(GptlabError, match="corrupt"):
        load_tokenizer(tmp_path / "tokenizer.json")
