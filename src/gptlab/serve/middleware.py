"""ASGI middleware around every route: one log line plus a metrics count per request, and the cap on a
request body's size."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.exceptions import HTTPException

from gptlab.serve.errors import too_large_response
from gptlab.serve.metrics import Metrics

log = logging.getLogger("gptlab.serve")


class RequestLog:
    """One line per request (method, path, status, tokens in and out, seconds) and its count by status."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        scope.setdefault("state", {})

        async def tracking_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            tokens = scope["state"].get("tokens") or {}
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"  # the route's pattern: a bounded label set
            self.metrics.requests.labels(path, str(status)).inc()
            log.info(
                "%s %s %d tokens_in=%d tokens_out=%d %.3fs",
                scope["method"],
                scope["path"],
                status,
                tokens.get("in", 0),
                tokens.get("out", 0),
                time.perf_counter() - start,
            )


class BodyLimit:
    """Refuse a request body over max_bytes with 413 and the JSON error of its route, before it is read
    into memory: at once when its Content-Length says so, else as soon as the bytes received pass the cap
    (the route's read raises a 413 the error handlers answer)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large_response(scope["path"], self.max_bytes)(scope, receive, send)
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413)
            return message

        await self.app(scope, limited_receive, send)
