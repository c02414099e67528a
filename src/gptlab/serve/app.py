"""`gptlab serve`: a trained run behind an OpenAI-compatible HTTP API, on FastAPI and uvicorn.

    POST /v1/completions   prompt(s) -> completions, whole or streamed as server-sent events
    GET  /v1/models        the one model served (named after the run directory)
    GET  /health           liveness, with the run's training step

Concurrency: a queue, not cross-request batching. Each request gets its own KV cache and random
generators, and runs its prompts x n sequences as one batch; requests are served side by side, but
every model call (a prefill or one decode step) holds app.state.model_lock, so the requests take
turns step by step: a long generation never blocks a short one for its whole length, and no
request can see another's state. `/` and `/api/` belong to the exploration page (explore.py).
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from gptlab.device import pick_device
from gptlab.errors import GptlabError
from gptlab.inference.engine import SamplingParams, Step, generate_steps
from gptlab.inference.generate import prompt_ids
from gptlab.inference.probs import top_candidates
from gptlab.runs import LoadedRun, load_run
from gptlab.serve.chat import router as chat_router
from gptlab.serve.explore import router as explore_router
from gptlab.serve.openai import (MAX_CHARS_PER_POSITION, APIError, CompletionRequest, choice, completion,
                                 parse_request)



def create_app(run_dir: str | Path, device: str = "auto", max_tokens_limit: int = 2048) -> FastAPI:
    """The FastAPI app serving a run. app.state.run is the LoadedRun (.model, .tokenizer, .config);
    app.state.model_lock is the threading.Lock every model call made for a request must hold."""
    loaded = load_run(run_dir, pick_device(device))
    app = FastAPI(title="gptlab", description=f"Completions from the gptlab run {loaded.path}")
    app.state.run = loaded
    app.state.model_lock = threading.Lock()
    app.state.model_id = Path(run_dir).resolve().name
    app.state.max_tokens_limit = max_tokens_limit

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": app.state.model_id, "step": loaded.step}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        created = int((loaded.path / "config.json").stat().st_mtime)
        return {"object": "list", "data": [{"id": app.state.model_id, "object": "model", "created": created,
                                            "owned_by": "gptlab"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req, rows, prompt_tokens = _read(app, await request.body())
        job = _Job(app, req, rows, prompt_tokens)
        if req.stream:
            return StreamingResponse(job.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return JSONResponse(await run_in_threadpool(job.whole))

    app.include_router(explore_router)  # the page at / and its JSON under /api/
    app.include_router(chat_router)  # POST /v1/chat/completions (serve/chat.py)
    return app


def _read(app: FastAPI, body: bytes) -> tuple[CompletionRequest, list[list[int]], int]:
    """Parse and check a request; its token rows (each prompt n times) and its prompt token count."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"malformed JSON body: {exc}") from None
    req = parse_request(data, app.state.max_tokens_limit)
    if req.model is not None and req.model != app.state.model_id:
        raise APIError(404, f"model '{req.model}' is not served here (this server has '{app.state.model_id}')",
                       "model", code="model_not_found")
    run: LoadedRun = app.state.run
    block_size = run.config.model.block_size
    encoded = []
    for i, prompt in enumerate(req.prompts()):
        if len(prompt) > MAX_CHARS_PER_POSITION * block_size:
            raise APIError(400, f"prompt {i} is {len(prompt):,} characters; this model reads at most "
                           f"{block_size} tokens", "prompt", code="context_length_exceeded")
        try:
            ids = prompt_ids(run.tokenizer, prompt)
        except GptlabError as exc:
            raise APIError(400, f"prompt {i}: {exc}", "prompt") from None
        if len(ids) > block_size:
            raise APIError(400, f"prompt {i} is {len(ids)} tokens; this model reads at most {block_size}",
                           "prompt", code="context_length_exceeded")
        encoded.append(ids)
    rows = [ids for ids in encoded for _ in range(req.n)]  # choice index = prompt index * n + j, as OpenAI
    return req, rows, sum(len(ids) for ids in encoded)


class _Job:
    """One request's generation, whole or as a stream of server-sent events."""

    def __init__(self, app: FastAPI, req: CompletionRequest, rows: list[list[int]], prompt_tokens: int):
        self.run: LoadedRun = app.state.run
        self.lock: threading.Lock = app.state.model_lock
        self.req, self.rows, self.prompt_tokens = req, rows, prompt_tokens
        self.prompt_chars = [len(p) for p in req.prompts() for _ in range(req.n)]
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), app.state.model_id

    def steps(self) -> Iterator[list[Step]]:
        """The engine's steps, each computed while holding the model lock."""
        r = self.req
        params = SamplingParams(r.max_tokens, r.temperature, r.top_k, r.top_p, r.repetition_penalty, r.stops(), r.seed)
        steps = generate_steps(self.run.model, self.run.tokenizer, self.rows, params,
                               with_probs=r.logprobs is not None)
        while True:
            with self.lock:
                step = next(steps, None)
            if step is None:
                return
            yield step

    def _logprobs(self, step: Step) -> dict[str, Any]:
        """OpenAI's logprobs for one token, under the distribution at the request's temperature."""
        tok = self.run.tokenizer
        top = top_candidates(tok, step.probs, self.req.logprobs or 0)
        return {"tokens": [tok.id_to_piece(step.token)],
                "token_logprobs": [_log(float(step.probs[step.token]))],
                "top_logprobs": [{c.piece: _log(c.prob) for c in top}]}

    def whole(self) -> dict[str, Any]:
        """The whole response object."""
        texts = [""] * len(self.rows)
        finish = ["length"] * len(self.rows)
        logprobs = [{"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} for _ in self.rows]
        offsets = list(self.prompt_chars)  # where each sequence's next token starts, in characters
        generated = 0
        for step in self.steps():
            for s in step:
                generated += 1
                texts[s.seq] += s.text
                finish[s.seq] = s.finish or finish[s.seq]
                if self.req.logprobs is not None:
                    lp, piece_lp = logprobs[s.seq], self._logprobs(s)
                    for key in ("tokens", "token_logprobs", "top_logprobs"):
                        lp[key] += piece_lp[key]
                    lp["text_offset"].append(offsets[s.seq])
                    offsets[s.seq] += len(piece_lp["tokens"][0])
        choices = [choice(i, texts[i], finish[i], logprobs[i] if self.req.logprobs is not None else None)
                   for i in range(len(self.rows))]
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": generated,
                 "total_tokens": self.prompt_tokens + generated}
        return completion(self.id, self.created, self.model, choices, usage)

    def events(self) -> Iterator[str]:
        """Server-sent events: one chunk per token with text (and each sequence's finish), then [DONE]."""
        finished = set()
        for step in self.steps():
            for s in step:
                if not (s.text or s.finish or self.req.logprobs is not None):
                    continue
                logprobs = self._logprobs(s) if self.req.logprobs is not None else None
                finished.update([s.seq] if s.finish else [])
                yield _sse(completion(self.id, self.created, self.model, [choice(s.seq, s.text, s.finish, logprobs)]))
        for i in range(len(self.rows)):
            if i not in finished:  # max_tokens=0: nothing was generated
                yield _sse(completion(self.id, self.created, self.model, [choice(i, "", "length", None)]))
        yield "data: [DONE]\n\n"


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -1e9  # JSON has no -inf


def _is_loopback(host: str) -> bool:
    """Whether host is reachable from this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          max_tokens_limit: int = 2048) -> None:
    """`gptlab serve`: load the run, bind host:port (0: any free port), serve until Ctrl-C."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise GptlabError(f"port={port} must be in 0..65535")
    if max_tokens_limit < 1:
        raise GptlabError(f"max_tokens_limit={max_tokens_limit} must be >= 1")
    app = create_app(run, device, max_tokens_limit)
    if not _is_loopback(host):
        print(f"warning: binding {host} makes the model reachable from other machines, with no "
              "authentication; use the default 127.0.0.1 unless that is what you want", file=sys.stderr, flush=True)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise GptlabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {app.state.model_id} (step {app.state.run.step}) on http://{shown}:{bound} "
          "(POST /v1/completions, GET /v1/models, GET /health); Ctrl-C stops", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
