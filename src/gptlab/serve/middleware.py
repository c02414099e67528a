"""ASGI middleware around every route: a cap on the request body (413 before it is read into
memory), and one log line plus a metrics count per request."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from gptlab.serve.metrics import Metrics

log = logging.getLogger("gptlab.serve")


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse bodies over max_bytes with 413: by Content-Length up front, else while they arrive."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send)
        received, started = 0, False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": {"message": f"request body larger than {self.max_bytes:,} bytes",
                                     "type": "invalid_request_error", "param": None,
                                     "code": "request_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


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
            log.info("%s %s %d tokens_in=%d tokens_out=%d %.3fs", scope["method"], scope["path"], status,
                     tokens.get("in", 0), tokens.get("out", 0), time.perf_counter() - start)
