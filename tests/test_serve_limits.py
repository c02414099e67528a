"""One request costs the server its own share, and no more: each hostile request runs beside a victim
request, which must get the same tokens as alone, while /health answers within a second. The server is
the real command on a chat-capable run with random weights (serving does not care what was learnt)."""

import json
import threading

import httpx
import pytest
import torch

from gptlab.config import build_config
from gptlab.fileio import atomic_write_json
from gptlab.model import build_model
from gptlab.posttrain.template import add_chat_tokens
from gptlab.runs import CONFIG, TOKENIZER, WEIGHTS, save_weights
from gptlab.tokenizers import CharTokenizer
from test_serve_service import Server

TIMEOUT = 60
VICTIM = {"prompt": "First", "max_tokens": 60, "temperature": 0.9, "seed": 5}


@pytest.fixture(scope="module")
def server(tmp_path_factory, shakespeare_txt):
    path = tmp_path_factory.mktemp("limits") / "chatty"
    tokenizer = add_chat_tokens(CharTokenizer(shakespeare_txt.read_text(encoding="utf-8")[:20000]))
    cfg = build_config(
        None,
        None,
        ["n_layer=2", "n_head=2", "n_embd=32", "block_size=64", "dropout=0.0", f"vocab_size={tokenizer.vocab_size}"],
    )
    torch.manual_seed(0)
    path.mkdir()
    atomic_write_json(path / CONFIG, cfg.to_dict())
    tokenizer.save(path / TOKENIZER)
    save_weights(build_model(cfg.model), path / WEIGHTS, step=0)
    s = Server(path, tmp_path_factory.mktemp("logs"))
    yield s
    assert s.proc.poll() is None, "the server died during the tests"
    s.stop()


def _post(base: str, path: str, body: object) -> httpx.Response:
    return httpx.post(
        base + path, content=json.dumps(body), headers={"content-type": "application/json"}, timeout=TIMEOUT
    )


def _tiny_messages(total_bytes: int) -> list[dict]:
    message = {"role": "user", "content": "a"}
    return [message] * (total_bytes // len(json.dumps(message)))


HOSTILE = {
    # ~2 MB of tiny messages: refused for their count, parsed off the event loop.
    "2 MB chat of tiny messages": ("/v1/chat/completions", {"messages": _tiny_messages(2 * 2**20)}, 400),
    # As many tiny messages as allowed: each kept turn encoded once, the dropped ones never.
    "1,000 tiny messages": ("/v1/chat/completions", {"messages": _tiny_messages(33_000)[:1000], "max_tokens": 5}, 200),
    "a 1,000,001-character conversation": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "a" * 500_001}, {"role": "user", "content": "a" * 500_000}]},
        400,
    ),
    "a 100,000-character stop string": ("/v1/completions", {"prompt": "a", "stop": "x" * 100_000}, 400),
    "a 1,000-character stop string": ("/v1/completions", {"prompt": "a", "stop": "e" * 1000, "max_tokens": 200}, 200),
    "top_p=1e-46": ("/v1/completions", {"prompt": "a", "top_p": 1e-46, "max_tokens": 50}, 400),
    "a 5,000-digit integer": ("/v1/completions", '{"prompt": "a", "max_tokens": ' + "9" * 5000 + "}", 400),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_request_costs_only_its_own_share(server, name):
    path, body, status = HOSTILE[name]
    alone = _post(server.base, "/v1/completions", VICTIM).json()["choices"][0]["text"]
    results: dict[str, httpx.Response] = {}
    threads = [
        threading.Thread(target=lambda: results.setdefault("victim", _post(server.base, "/v1/completions", VICTIM))),
        threading.Thread(target=lambda: results.setdefault("hostile", _post(server.base, path, body))),
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        # The event loop is never held: a cheap route answers within a second whatever is in flight.
        assert httpx.get(server.base + "/health", timeout=1.0).status_code == 200
    hostile = results["hostile"]
    assert hostile.status_code == status, hostile.text
    if status == 400:
        assert hostile.json()["error"]["message"]
    assert results["victim"].json()["choices"][0]["text"] == alone  # its tokens are as alone


def test_the_new_limits_say_what_they_are(server):
    r = _post(server.base, "/v1/chat/completions", {"messages": _tiny_messages(40_000)[:1001]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert "at most 1000" in r.json()["error"]["message"]
    r = _post(server.base, "/v1/chat/completions", HOSTILE["a 1,000,001-character conversation"][1])
    assert "at most 1,000,000 are accepted" in r.json()["error"]["message"]
    r = _post(server.base, "/v1/completions", {"prompt": "a", "stop": ["a", "x" * 1001]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    assert "at most 1,000 characters" in r.json()["error"]["message"]
    r = _post(server.base, "/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "top_p": 1e-46})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_p"
