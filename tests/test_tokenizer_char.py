import pytest

from gptlab.errors import GptlabError
from gptlab.tokenizers import CharTokenizer, load_tokenizer


def test_round_trip_on_real_text(shakespeare_txt):
    text = shakespeare_txt.read_text(encoding="utf-8")
    tok = CharTokenizer.train([text])
    assert tok.vocab_size == 65  # the classic tinyshakespeare character set
    ids = tok.encode(text[:5000])
    assert max(ids) < tok.vocab_size
    assert tok.decode(ids) == text[:5000]


def test_ids_follow_sorted_characters():
    tok = CharTokenizer.train(["hello", "world"])
    assert tok.chars == sorted(set("helloworld"))
    assert tok.encode("dh") == [0, 2]  # d, e, h, l, o, r, w


def test_unknown_characters_are_named():
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(GptlabError) as err:
        tok.encode("abzq")
    assert "'z'" in str(err.value) and "'q'" in str(err.value)


def test_save_and_load(tmp_path):
    tok = CharTokenizer.train(["日本語 text\n"])
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.chars == tok.chars
    assert again.decode(again.encode("語 tex")) == "語 tex"
