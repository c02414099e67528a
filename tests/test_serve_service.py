"""`gptlab serve` under a hostile crowd, started for real on free localhost ports: clients that
leave, a full queue, oversized and malformed bodies, /metrics, the request log, a quick shutdown.
Every request has a timeout; every server is stopped."""

import json
import signal
import threading
import time

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from conftest import start_server, stop, wait_until_serving
from gptlab.config import build_config
from gptlab.fileio import atomic_write_json
from gptlab.model import build_model
from gptlab.runs import CONFIG, TOKENIZER, WEIGHTS, save_weights
from gptlab.tokenizers import CharTokenizer

TIMEOUT = 60
LONG = {"prompt": "First", "max_tokens": 1_000_000}  # never finishes on its own within a test


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shakespeare_txt):
    """A run with random weights (serving does not care what was learnt), block of 32."""
    path = tmp_path_factory.mktemp("svc") / "tiny"
    tokenizer = CharTokenizer(shakespeare_txt.read_text(encoding="utf-8")[:20000])
    cfg = build_config(
        None,
        None,
        ["n_layer=2", "n_head=2", "n_embd=32", "block_size=32", "dropout=0.0", f"vocab_size={tokenizer.vocab_size}"],
    )
    torch.manual_seed(0)
    path.mkdir()
    atomic_write_json(path / CONFIG, cfg.to_dict())
    tokenizer.save(path / TOKENIZER)
    save_weights(build_model(cfg.model), path / WEIGHTS, step=0)
    return path


class Server:
    """`gptlab serve RUN --port 0 ARGS` in its own process."""

    def __init__(self, run_dir, logs, *args):
        self.logs = logs
        self.proc = start_server(run_dir, logs, "--max-tokens-limit", "1000000", *args)
        self.base = wait_until_serving(self.proc, logs)

    def stop(self):
        stop(self.proc)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    s = Server(run_dir, tmp_path_factory.mktemp("logs"), "--max-body-mb", "0.01")
    yield s
    assert s.proc.poll() is None, "the server died during the tests"
    s.stop()


def metrics(base):
    """{name: value} of the unlabelled samples of /metrics, and the families."""
    families = list(text_string_to_metric_families(httpx.get(base + "/metrics", timeout=TIMEOUT).text))
    return {s.name: s.value for f in families for s in f.samples if not s.labels}, families


def wait_for(predicate, what, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


def assert_generation_stopped(base):
    """No sequence runs any more and no token is generated after that."""
    wait_for(lambda: metrics(base)[0]["gptlab_running_sequences"] == 0, "the left client's row was not freed")
    before = metrics(base)[0]["gptlab_generated_tokens_total"]
    time.sleep(0.5)
    assert metrics(base)[0]["gptlab_generated_tokens_total"] == before


def test_a_client_that_leaves_a_whole_response_frees_its_row(server):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base + "/v1/completions", json=LONG, timeout=1.5)
    assert_generation_stopped(server.base)


def test_a_client_that_leaves_a_stream_frees_its_row(server):
    with httpx.stream("POST", server.base + "/v1/completions", json=LONG | {"stream": True}, timeout=TIMEOUT) as r:
        lines = r.iter_lines()
        events = []
        for line in lines:
            if line.startswith("data: "):
                events.append(line)
            if len(events) == 3:
                break
    assert_generation_stopped(server.base)


def test_cheap_routes_and_short_requests_do_not_wait_behind_long_ones(server):
    stop = threading.Event()

    def long_stream():
        with httpx.stream("POST", server.base + "/v1/completions", json=LONG | {"stream": True}, timeout=TIMEOUT) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=long_stream) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: metrics(server.base)[0]["gptlab_running_sequences"] == 4, "the long requests did not start")
        for path in ("/health", "/api/info", "/"):
            assert httpx.get(server.base + path, timeout=10).status_code == 200
        r = httpx.post(server.base + "/v1/completions", json={"prompt": "A", "max_tokens": 1}, timeout=10)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    assert_generation_stopped(server.base)


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", '{"prompt": "a", "temperature": 1e-40}', "temperature"),
        ("/v1/completions", '{"prompt": "a", "temperature": 5e-324}', "temperature"),
        ("/v1/completions", '{"prompt": "a", "temperature": 5e-324, "stream": true}', "temperature"),
        ("/v1/completions", '{"prompt": "a", "repetition_penalty": 1e-300}', "repetition_penalty"),
        ("/v1/completions", "[" * 1000 + "]" * 1000, None),
        ("/api/next", '{"text": "a", "temperature": NaN}', None),
        ("/api/next", '{"text": "a", "temperature": 1e-40}', None),
        ("/api/step", '{"text": "a", "mode": "sample", "temperature": Infinity}', None),
        ("/api/step", '{"text": "a", "mode": "sample", "seed": 18446744073709551616}', None),
        ("/api/attention", '{"text": "a", "layer": NaN}', None),
        ("/api/next", "[" * 1000 + "]" * 1000, None),
        ("/v1/completions", '{"prompt": "a", "top_p": 1e-46}', "top_p"),  # rounds to 0 in float32
        ("/v1/completions", '{"prompt": "a", "top_p": 1e-7, "stream": true}', "top_p"),
        ("/v1/completions", '{"prompt": "a", "stop": "' + "x" * 1001 + '"}', "stop"),
        ("/v1/completions", '{"prompt": "a", "max_tokens": ' + "9" * 5000 + "}", None),  # past int()'s digit limit
        ("/api/next", '{"text": "a", "k": ' + "9" * 5000 + "}", None),
    ],
)
def test_malformed_settings_are_400_not_500(server, path, body, param):
    r = httpx.post(server.base + path, content=body, headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    if path.startswith("/v1"):
        assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    else:
        assert r.json()["detail"]


def test_oversized_bodies_are_refused_unread(server):
    big = json.dumps({"prompt": "a" * 20_000})  # over the 0.01 MB this server takes
    r = httpx.post(
        server.base + "/v1/completions", content=big, headers={"content-type": "application/json"}, timeout=TIMEOUT
    )
    assert r.status_code == 413  # refused by its Content-Length, before a byte of it is read
    assert r.json()["error"]["code"] == "request_too_large"  # the JSON error the docs promise, not plain text
    r = httpx.post(
        server.base + "/api/next", content=big, headers={"content-type": "application/json"}, timeout=TIMEOUT
    )
    assert r.status_code == 413 and r.json()["detail"].startswith("request body larger than")
    r = httpx.post(server.base + "/no/such/route", content=big, timeout=TIMEOUT)  # no route reads it: still JSON
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # Without a Content-Length (chunked), the body is counted as it arrives.
    for path in ("/v1/completions", "/api/next"):
        r = httpx.post(
            server.base + path,
            content=iter([big.encode()[:8000], big.encode()[8000:]]),
            headers={"content-type": "application/json"},
            timeout=TIMEOUT,
        )
        assert r.status_code == 413
    assert r.json()["detail"].startswith("request body larger than the 10,485 bytes")
    assert httpx.get(server.base + "/health", timeout=TIMEOUT).status_code == 200


def test_metrics_and_the_request_log(server):
    r = httpx.post(server.base + "/v1/completions", json={"prompt": "First", "max_tokens": 5}, timeout=TIMEOUT)
    assert r.status_code == 200
    httpx.post(server.base + "/v1/completions", json={"prompt": 5}, timeout=TIMEOUT)
    _, families = metrics(server.base)
    by_name = {f.name: f for f in families}
    statuses = {
        (s.labels["route"], s.labels["status"])
        for s in by_name["gptlab_requests"].samples
        if s.name == "gptlab_requests_total" and s.value > 0
    }
    assert {("/v1/completions", "200"), ("/v1/completions", "400")} <= statuses
    assert by_name["gptlab_time_to_first_token_seconds"].type == "histogram"
    counts = {s.name: s.value for f in families for s in f.samples if s.name.endswith("_count")}
    assert counts["gptlab_time_to_first_token_seconds_count"] >= 1
    assert counts["gptlab_time_per_token_seconds_count"] >= 4
    assert {"gptlab_prompt_tokens_total", "gptlab_waiting_sequences"} <= {s.name for f in families for s in f.samples}
    log = (server.logs / "stderr").read_text()
    assert any("POST /v1/completions 200 tokens_in=5 tokens_out=5" in line for line in log.splitlines())


def test_openapi_documents_the_body_and_every_refusal(server):
    spec = httpx.get(server.base + "/openapi.json", timeout=TIMEOUT).json()
    post = spec["paths"]["/v1/completions"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "max_tokens", "temperature", "stream"} <= set(schema["properties"])
    assert {"400", "404", "413", "503"} <= set(post["responses"])
    assert {"400", "413", "422", "503"} <= set(spec["paths"]["/api/step"]["post"]["responses"])


def test_full_queue_is_503_with_retry_after_and_ctrl_c_is_quick(run_dir, tmp_path):
    s = Server(run_dir, tmp_path, "--max-batch", "1", "--max-waiting", "0")
    try:
        with httpx.stream("POST", s.base + "/v1/completions", json=LONG | {"stream": True}, timeout=TIMEOUT) as r:
            lines = r.iter_lines()  # kept: dropping a half-read iterator closes the connection
            next(lines)  # the one row is taken
            busy = httpx.post(s.base + "/v1/completions", json={"prompt": "A", "max_tokens": 1}, timeout=TIMEOUT)
            assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
            assert busy.json()["error"]["type"] == "server_overloaded"
            assert httpx.get(s.base + "/health", timeout=TIMEOUT).status_code == 200
            # Ctrl-C while a generation is streaming: the server stops within a few seconds.
            s.proc.send_signal(signal.SIGINT)
            assert s.proc.wait(timeout=15) in (0, 130)  # 130: stopped by Ctrl-C, as the CLI reports it
            assert "Traceback" not in (tmp_path / "stderr").read_text()
    finally:
        if s.proc.poll() is None:
            s.stop()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--max-batch", 0, "max_batch=0 must be >= 1"),
        ("--max-waiting", -1, "max_waiting=-1 must be >= 0"),
        ("--max-body-mb", 0, "--max-body-mb 0.0 must be a positive"),
        ("--max-body-mb", "nan", "--max-body-mb nan must be a positive"),
    ],
)
def test_bad_serve_options_are_one_clear_line(capsys, run_dir, flag, value, message):
    from gptlab.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(run_dir), "--port", "0", flag, str(value)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_events_are_handed_over_together_yet_none_waits_past_its_end(run_dir, monkeypatch):
    """The model thread hands events to the event loop in batches (serve/service.py FLUSH_EVERY); a
    sequence's last event, and everything before it, still arrives at once, and in order."""
    import asyncio

    from gptlab.inference.decoding import SamplingParams
    from gptlab.runs import load_run
    from gptlab.serve import service as service_module

    monkeypatch.setattr(service_module, "FLUSH_EVERY", 3600.0)  # only an end or an idle batch flushes
    svc = service_module.ModelService(load_run(run_dir, "cpu"))
    wakeups = []
    real_deliver = service_module.Generation.deliver
    monkeypatch.setattr(
        service_module.Generation, "deliver", lambda gen, items: (wakeups.append(len(items)), real_deliver(gen, items))
    )

    async def both() -> tuple[list, list]:
        endless = svc.submit([[1, 2, 3]], SamplingParams(10_000, seed=1))
        short = svc.submit([[1, 2, 3]], SamplingParams(12, seed=2))
        got = await asyncio.wait_for(_collect(short), 60)  # ends while the other goes on
        endless.cancel()
        rest = await asyncio.wait_for(_collect(endless), 60)
        return got, rest

    try:
        short_events, endless_events = asyncio.run(both())
    finally:
        svc.stop()
    assert [e.token is not None for e in short_events] == [True] * 12 and short_events[-1].finish == "length"
    assert endless_events[-1].finish == "cancelled"
    assert max(wakeups) > 1  # a flush carried several steps' events at once


async def _collect(gen) -> list:
    return [event async for _, event in gen]
