"""`gptlab serve` started for real on a free localhost port: completions, streams, bad requests,
a burst of concurrent clients. Every request goes to 127.0.0.1 with a timeout; the server is always
stopped."""

import json
import math
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import assert_clean_error, serving
from gptlab.cli import main
from gptlab.config import build_config
from gptlab.data.prepare import prepare
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.inference.probs import next_token_probs
from gptlab.inference.score import score_tokens
from gptlab.runs import load_run
from gptlab.train.trainer import train

BLOCK = 32
TIMEOUT = 60  # seconds, for any one request


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shakespeare_txt):
    root = tmp_path_factory.mktemp("serve")
    (root / "text.txt").write_text(shakespeare_txt.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    prepare([str(root / "text.txt")], root / "data", "char")
    cfg = build_config(
        None,
        None,
        [
            "max_steps=10",
            "n_layer=2",
            "n_head=2",
            "n_embd=32",
            f"block_size={BLOCK}",
            "batch_size=8",
            "eval_batches=1",
            "sample_tokens=0",
            "warmup_steps=2",
        ],
    )
    cfg.data = str(root / "data")
    train(cfg, root / "tiny")
    return root / "tiny"


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """The real command, `gptlab serve RUN --port 0`, in its own process; yields its base URL."""
    with serving(run_dir, logs=tmp_path_factory.mktemp("server-logs")) as base:
        yield base


def post(base, body, **kwargs):
    return httpx.post(base + "/v1/completions", json=body, timeout=TIMEOUT, **kwargs)


def stream(base, body):
    """Texts and finish reasons per choice index from a streamed completion, and the raw events."""
    with httpx.stream("POST", base + "/v1/completions", json=body | {"stream": True}, timeout=TIMEOUT) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    texts, finish = {}, {}
    for event in events[:-1]:
        for c in json.loads(event)["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            if c["finish_reason"]:
                assert c["index"] not in finish, "two finish reasons for one choice"
                finish[c["index"]] = c["finish_reason"]
    return texts, finish, events


def test_health_and_models(server, run_dir):
    assert httpx.get(server + "/health", timeout=TIMEOUT).json() == {"status": "ok", "model": "tiny", "step": 10}
    models = httpx.get(server + "/v1/models", timeout=TIMEOUT).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]


def test_greedy_completion_is_the_engines(server, run_dir):
    r = post(server, {"model": "tiny", "prompt": "First", "max_tokens": 40, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    loaded = load_run(run_dir)
    steps = generate_steps(
        loaded.model, loaded.tokenizer, [loaded.tokenizer.encode("First")], SamplingParams(40, temperature=0)
    )
    expected = "".join(s[0].text for s in steps)
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert [c["text"] for c in body["choices"]] == [expected]  # 5 + 40 tokens: past the 32-token block
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}


def test_prompt_lists_n_and_seed(server):
    body = {"prompt": ["First", "All"], "n": 2, "max_tokens": 16, "seed": 3, "temperature": 1.0}
    first, again = post(server, body).json(), post(server, body).json()
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert first["choices"] == again["choices"]
    assert len({c["text"] for c in first["choices"]}) == 4
    other = post(server, body | {"seed": 4}).json()
    assert other["choices"] != first["choices"]
    texts, finish, _ = stream(server, body)
    assert [texts[i] for i in range(4)] == [c["text"] for c in first["choices"]]
    assert finish == {i: "length" for i in range(4)}


def test_stream_ends_with_done_and_zero_tokens_still_finish(server):
    texts, finish, events = stream(server, {"prompt": "A", "max_tokens": 0})
    assert texts == {0: ""} and finish == {0: "length"} and events[-1] == "[DONE]"


def test_stop_strings(server):
    plain = post(server, {"prompt": "First", "max_tokens": 30, "temperature": 0}).json()["choices"][0]["text"]
    stop = plain[4:6]
    r = post(server, {"prompt": "First", "max_tokens": 30, "temperature": 0, "stop": [stop, "never"]}).json()
    assert r["choices"][0]["text"] == plain[: plain.index(stop)] and r["choices"][0]["finish_reason"] == "stop"
    texts, finish, _ = stream(server, {"prompt": "First", "max_tokens": 30, "temperature": 0, "stop": stop})
    assert texts[0] == r["choices"][0]["text"] and finish[0] == "stop"


def test_logprobs(server, run_dir):
    r = post(server, {"prompt": "First", "max_tokens": 6, "temperature": 0, "logprobs": 3}).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert lp["text_offset"] == list(range(5, 11))
    for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 3 and chosen <= 0 and chosen == pytest.approx(max(top.values()))  # greedy
    loaded = load_run(run_dir)
    first = float(next_token_probs(loaded.model, loaded.tokenizer.encode("First")).max())
    assert lp["token_logprobs"][0] == pytest.approx(math.log(first), abs=1e-4)


def test_echo_scores_the_prompt_as_the_training_loss_does(server, run_dir):
    import torch

    from gptlab.model.loss import IGNORE

    prompt = "First Citizen:\nBefore we proceed"
    r = post(server, {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 2, "echo": True}).json()
    choice = r["choices"][0]
    lp = choice["logprobs"]
    loaded = load_run(run_dir)
    ids = loaded.tokenizer.encode(prompt)
    assert choice["text"].startswith(prompt) and len(choice["text"]) == len(prompt) + 1
    assert len(lp["token_logprobs"]) == len(ids) + 1 and lp["text_offset"][: len(ids)] == list(range(len(ids)))
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # nothing predicts the first token
    # The sum of the prompt's logprobs is minus the model's own loss over those targets.
    targets = torch.tensor([ids[1:] + [IGNORE]])
    with torch.no_grad():
        _, loss = loaded.model(torch.tensor([ids]), targets)
    assert sum(lp["token_logprobs"][1 : len(ids)]) == pytest.approx(-loss.item() * (len(ids) - 1), abs=1e-3)
    for chosen, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        assert len(top) <= 2 and max(top.values()) >= chosen
    as_ids = post(server, {"prompt": [ids], "max_tokens": 0, "logprobs": 1, "echo": True}).json()["choices"][0]
    assert as_ids["text"] == prompt and as_ids["logprobs"]["token_logprobs"] == lp["token_logprobs"][: len(ids)]


def test_echo_with_n_scores_each_prompt_once(run_dir, monkeypatch):
    from fastapi.testclient import TestClient

    import gptlab.serve.completions as completions
    from gptlab.serve.app import create_app

    scored = []

    def counting(model, ids, top_k=0):
        scored.append(list(ids))
        return score_tokens(model, ids, top_k)

    monkeypatch.setattr(completions, "score_tokens", counting)
    body = {"prompt": ["First Citizen", "Before we"], "max_tokens": 3, "logprobs": 2, "echo": True, "seed": 0}
    with TestClient(create_app(run_dir, "cpu")) as client:
        alone = [client.post("/v1/completions", json=body | {"prompt": p}).json() for p in body["prompt"]]
        scored.clear()
        together = client.post("/v1/completions", json=body | {"n": 3}).json()
    tok = load_run(run_dir).tokenizer
    assert scored == [tok.encode(p) for p in body["prompt"]]  # two prompts, each scored once for its 3 choices
    for i, choice in enumerate(together["choices"]):
        one = alone[i // 3]["choices"][0]["logprobs"]
        n = len(tok.encode(body["prompt"][i // 3]))
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            assert choice["logprobs"][key][:n] == one[key][:n]
        assert len(choice["logprobs"]["tokens"]) == n + 3  # the prompt's, then the choice's own
    assert together["choices"][0]["text"] == alone[0]["choices"][0]["text"]  # seed + 0, as alone


def test_text_offsets_are_each_prefix_length_in_one_pass(tang_jsonl, shakespeare_txt, monkeypatch):
    import random

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from gptlab.posttrain.template import add_chat_tokens
    from gptlab.serve.completions import text_offsets
    from gptlab.tokenizers.bpe import BPETokenizer
    from gptlab.tokenizers.huggingface import HuggingFaceTokenizer

    english = shakespeare_txt.read_text(encoding="utf-8")[:20000]
    poems = ["\n".join(json.loads(line)["paragraphs"]) for line in tang_jsonl.read_text(encoding="utf-8").splitlines()]
    bpe = BPETokenizer.train([english, *poems[:200]], vocab_size=300)  # Chinese characters split across tokens
    hf = HFTokenizer(models.BPE(unk_token="[UNK]"))
    hf.pre_tokenizer, hf.decoder = (
        pre_tokenizers.Metaspace(),
        decoders.Metaspace(),
    )  # decodes a lone token unlike in context
    hf.train_from_iterator([english], trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]"]))
    imported = HuggingFaceTokenizer(json.loads(hf.to_str()))

    def defined(tok, ids):  # the definition: the length of the text of the tokens before
        return [len(tok.decode(ids[:i])) for i in range(len(ids))]

    rng = random.Random(0)
    chat = add_chat_tokens(bpe)
    for tok in (bpe, chat):
        text = english[:300] + poems[0] + "é😀"
        cases = [tok.encode(text)] + [[rng.randrange(tok.vocab_size) for _ in range(20)] for _ in range(200)]
        for ids in cases:  # real text, and random ids: partial and invalid UTF-8 sequences included
            assert text_offsets(tok, ids) == defined(tok, ids)
    ids = imported.encode(english[:300])
    assert text_offsets(imported, ids) == defined(imported, ids)
    decodes = []
    plain = bpe.decode
    monkeypatch.setattr(bpe, "decode", lambda ids: decodes.append(1) or plain(ids))
    long = bpe.encode(english[:5000])
    assert text_offsets(bpe, long) == [len(plain(long[:i])) for i in range(len(long))]
    assert len(decodes) == 1  # the whole text once (to check it is the bytes joined), not once per prefix


def test_tokenizer_routes(server, run_dir):
    tok = load_run(run_dir).tokenizer
    info = httpx.get(server + "/tokenizer_info", timeout=TIMEOUT).json()
    assert info["eos_token"] is None and info["model_max_length"] == BLOCK and info["vocab_size"] == tok.vocab_size
    ids = httpx.post(
        server + "/tokenize", json={"prompt": "First, you", "add_special_tokens": False}, timeout=TIMEOUT
    ).json()["tokens"]
    assert ids == tok.encode("First, you")
    assert httpx.post(server + "/detokenize", json={"tokens": ids}, timeout=TIMEOUT).json() == {"prompt": "First, you"}
    bad = httpx.post(server + "/detokenize", json={"tokens": [tok.vocab_size]}, timeout=TIMEOUT)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    bad = httpx.post(server + "/tokenize", json={"prompt": "✓"}, timeout=TIMEOUT)
    assert bad.status_code == 400 and "not in this char tokenizer" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        ({"prompt": 5}, 400, "prompt"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": "a", "max_tokens": 10**9}, 400, "max_tokens"),
        ({"prompt": "a", "max_tokens": "5"}, 400, "max_tokens"),
        ({"prompt": "a", "max_tokens": True}, 400, "max_tokens"),
        ({"prompt": "a", "temperature": "hot"}, 400, "temperature"),
        ({"prompt": "a", "top_p": 0}, 400, "top_p"),
        ({"prompt": "a", "n": 0}, 400, "n"),
        ({"prompt": "a", "logprobs": 6}, 400, "logprobs"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"prompt": "a" * (BLOCK + 1)}, 400, "prompt"),
        ({"prompt": "a ✓"}, 400, "prompt"),
        ({"prompt": "a", "max_token": 5}, 400, "max_token"),
        ({"prompt": "a", "echo": True, "stream": True}, 400, "echo"),
        ({"prompt": [0, 10**6]}, 400, "prompt"),
        ({"prompt": list(range(BLOCK + 1))}, 400, "prompt"),
        ({"prompt": "a", "model": "gpt-4"}, 404, "model"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_stays_up(server, body, status, param):
    kwargs = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    r = httpx.post(server + "/v1/completions", timeout=TIMEOUT, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert httpx.get(server + "/health", timeout=TIMEOUT).status_code == 200


def test_fifty_concurrent_clients_get_their_own_answers(server):
    kinds = [
        {"prompt": "First", "max_tokens": 12, "seed": 1},
        {"prompt": "All", "max_tokens": 12, "seed": 2, "n": 2},
        {"prompt": "You", "max_tokens": 12, "temperature": 0},
        {"prompt": ["We", "What"], "max_tokens": 12, "seed": 4, "top_p": 0.8},
        {"prompt": "First", "max_tokens": 12, "seed": 5, "stream": True},
    ]

    def ask(body):
        if body.get("stream"):
            texts, _, _ = stream(server, body)
            return [texts[i] for i in sorted(texts)]
        r = post(server, body)
        assert r.status_code == 200, r.text
        return [c["text"] for c in r.json()["choices"]]

    expected = [ask(k) for k in kinds]  # one at a time
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(ask, [kinds[i % len(kinds)] for i in range(50)]))
    for i, answer in enumerate(answers):
        assert answer == expected[i % len(kinds)], f"client {i} got another request's text"


def test_serve_errors_are_one_clear_line(capsys, tmp_path, run_dir):
    def cli(*args):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_.value.code, out.out, out.err)

    assert_clean_error(cli("serve", tmp_path), "not a gptlab run")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert_clean_error(cli("serve", run_dir, "--port", taken.getsockname()[1]), "cannot listen")
    # A non-loopback address warns first (192.0.2.1 is a documentation address: the bind then fails).
    proc = cli("serve", run_dir, "--host", "192.0.2.1", "--port", "0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("warning: binding 192.0.2.1") and "cannot listen" in proc.stderr
