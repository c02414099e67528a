"""`gptlab serve`: a trained run behind an OpenAI-compatible HTTP API, on FastAPI and uvicorn.

    POST /v1/completions   prompt(s) -> completions, whole or streamed as server-sent events
    GET  /tokenizer_info, POST /tokenize, POST /detokenize   the tokenizer (tokenizer_routes.py)
    POST /api/reward       a reward model's score of an answer (reward_api.py; runs of `gptlab reward`)
    GET  /v1/models        the one model served (named after the run directory)
    GET  /health           liveness, with the run's training step
    GET  /metrics          Prometheus metrics (requests, tokens, batch, latencies)

Concurrency: continuous batching. Every route that needs the model goes through one ModelService
(serve/service.py): one thread owns the model and runs all running sequences' decode steps as one
forward pass, sequences joining and leaving at step boundaries, up to max_batch rows (with
max_batch 1 the requests take turns, one decode step each). `/` and `/api/` belong to the
exploration page (explore.py), which uses the same service.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.runs import load_run
from gptlab.serve.chat import router as chat_router
from gptlab.serve.completions import router as completions_router
from gptlab.serve.encdec_api import router as encdec_router
from gptlab.serve.errors import install_error_handlers
from gptlab.serve.explore import router as explore_router
from gptlab.serve.history_api import router as history_router
from gptlab.serve.lesson_api import LessonHolder
from gptlab.serve.lesson_api import router as lesson_router
from gptlab.serve.metrics import Metrics
from gptlab.serve.metrics import router as metrics_router
from gptlab.serve.middleware import BodyLimit, RequestLog
from gptlab.serve.reward_api import router as reward_router
from gptlab.serve.service import ModelService
from gptlab.serve.tokenizer_routes import router as tokenizer_router
from gptlab.serve.trace_api import TraceRecords
from gptlab.serve.trace_api import router as trace_router

MAX_BODY_BYTES = 4 * 2**20  # default cap on a request body: prompts are short, a body of megabytes is abuse


def create_app(
    run_dir: str | Path,
    device: str = "auto",
    max_tokens_limit: int = 2048,
    max_batch: int = 16,
    max_waiting: int = 256,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app serving a run. app.state.run is the LoadedRun (.model, .tokenizer, .config);
    app.state.service the ModelService every route uses for the model (routes never touch it)."""
    loaded = load_run(run_dir, pick_device(device))
    metrics = Metrics()
    service = ModelService(loaded, max_batch=max_batch, max_waiting=max_waiting, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.stop()  # on shutdown: cancel every sequence, stop the model thread

    app = FastAPI(title="gptlab", description=f"Completions from the gptlab run {loaded.path}", lifespan=lifespan)
    app.state.run = loaded
    app.state.service = service
    app.state.model_id = Path(run_dir).resolve().name
    app.state.max_tokens_limit = max_tokens_limit
    app.state.max_body_bytes = max_body_bytes
    app.state.trace_records = TraceRecords()  # the page's traced prompts (weights do not change while served)
    app.state.lesson = LessonHolder()  # the page's training steps, on a copy made at the first one
    install_error_handlers(app)
    # The body cap inside the request log, so that its 413s are logged and counted too. (Not FastAPI's
    # max_body_size: a 413 it decides from Content-Length is plain text, not our JSON error.)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestLog, metrics=metrics)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": app.state.model_id, "step": loaded.step}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        created = int((loaded.path / "config.json").stat().st_mtime)
        return {
            "object": "list",
            "data": [{"id": app.state.model_id, "object": "model", "created": created, "owned_by": "gptlab"}],
        }

    app.include_router(completions_router)
    app.include_router(metrics_router)
    app.include_router(explore_router)  # the page at / and its JSON under /api/
    app.include_router(trace_router)  # the page's step-through view: /api/trace
    app.include_router(lesson_router)  # the page's "Train on this" view: /api/train-step (serve/lesson_api.py)
    app.include_router(history_router)  # the page's history view: /api/history (explore.py's `step` fields)
    app.include_router(tokenizer_router)  # /tokenizer_info, /tokenize, /detokenize (lm-evaluation-harness)
    app.include_router(encdec_router)  # an encoder–decoder run's attention view
    app.include_router(chat_router)  # POST /v1/chat/completions (serve/chat.py)
    app.include_router(reward_router)  # POST /api/reward: a reward model's score (serve/reward_api.py)
    return app


def _is_loopback(host: str) -> bool:
    """Whether host is reachable from this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def serve(
    run: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    max_tokens_limit: int = 2048,
    max_batch: int = 16,
    max_waiting: int = 256,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """`gptlab serve`: load the run, bind host:port (0: any free port), serve until Ctrl-C."""
    if not 0 <= port <= 65535:
        raise GptlabError(f"port={port} must be in 0..65535")
    for name, value, least in (
        ("max_tokens_limit", max_tokens_limit, 1),
        ("max_batch", max_batch, 1),
        ("max_waiting", max_waiting, 0),
        ("max_body_bytes", max_body_bytes, 1),
    ):
        if value < least:
            raise GptlabError(f"{name}={value} must be >= {least}")
    app = create_app(run, device, max_tokens_limit, max_batch, max_waiting, max_body_bytes)
    if not _is_loopback(host):
        print(
            f"warning: binding {host} makes the model reachable from other machines, with no "
            "authentication; use the default 127.0.0.1 unless that is what you want",
            file=sys.stderr,
            flush=True,
        )
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        app.state.service.stop()
        raise GptlabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving {app.state.model_id} (step {app.state.run.step}) on http://{shown}:{bound} "
        f"(POST /v1/completions, GET /v1/models, GET /health, GET /metrics; batch of up to {max_batch}); "
        "Ctrl-C stops",
        flush=True,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Our request log replaces uvicorn's access log. A few seconds for open responses on Ctrl-C,
    # then the rest are cut (their sequences cancelled).
    config = uvicorn.Config(app, log_level="info", access_log=False, timeout_graceful_shutdown=3)
    _Server(config, app.state.service).run(sockets=[sock])


class _Server(uvicorn.Server):
    """uvicorn's server that, on Ctrl-C, first ends every generation (open streams then close at once
    with finish_reason "cancelled"), so its graceful shutdown does not wait on them."""

    def __init__(self, config: uvicorn.Config, service: ModelService):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.service.stop(timeout=2)
        super().handle_exit(sig, frame)
