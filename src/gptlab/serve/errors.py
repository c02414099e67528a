"""How the server refuses requests: OpenAI-style error bodies, the schema that documents them, and
the handlers that turn every failure a client can cause into a 4xx (never a 500)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class APIError(Exception):
    """A request the server refuses: becomes an OpenAI-style JSON error with this HTTP status
    (the page's /api routes read {"detail": message} instead)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers  # e.g. Retry-After on a 503

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """{"error": {...}}: the body of every refusal of /v1 routes."""

    error: ErrorDetail


class PageError(BaseModel):
    """{"detail": "..."}: the body of a refusal of /api routes."""

    detail: Any


def _doc(description: str, model: type[BaseModel] = ErrorBody) -> dict[str, Any]:
    return {"model": model, "description": description}


# The 4xx and 5xx answers of /v1 routes, for the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("invalid request: malformed JSON, a bad or unsupported field, a prompt too long"),
    404: _doc("the model asked for is not the one served"),
    413: _doc("request body larger than the server accepts"),
    503: _doc("the waiting queue is full: retry after the Retry-After header's seconds"),
}
# The same for the page's /api routes (FastAPI adds 422 for bodies that fail their schema).
PAGE_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("invalid request: a prompt the tokenizer refuses, too long, or bad settings", PageError),
    413: _doc("request body larger than the server accepts", PageError),
    503: _doc("the waiting queue is full: retry after the Retry-After header's seconds", PageError),
}


def read_json(body: bytes) -> Any:
    """A request body's JSON, or APIError 400 saying why not."""
    try:
        return json.loads(body)
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of more digits than Python converts
        raise APIError(400, f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise APIError(400, "malformed JSON body: nested too deeply") from None


def too_large_response(path: str, max_bytes: int) -> JSONResponse:
    """The 413 of a body over the server's cap, in the error form of the route asked for."""
    message = f"request body larger than the {max_bytes:,} bytes this server accepts"
    if path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=413)
    return JSONResponse(APIError(413, message, code="request_too_large").body(), status_code=413)


def install_error_handlers(app: FastAPI) -> None:
    """Answer APIError as OpenAI does, and keep client mistakes the framework trips on at 4xx."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        if request.url.path.startswith("/api/"):  # the page reads {"detail": ...}
            return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(413)
    async def too_large(request: Request, exc: Exception) -> JSONResponse:
        return too_large_response(request.url.path, request.app.state.max_body_bytes)

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # The framework's JSON parser recursing on a body nested thousands deep.
        return JSONResponse({"detail": "malformed JSON body: nested too deeply"}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # As FastAPI's own answer, but the offending input is shown as text: NaN and Infinity have
        # no JSON form, and serialising them failed with a 500.
        errors = [{k: (repr(v) if k in ("input", "ctx") else v) for k, v in e.items()} for e in exc.errors()]
        # NaN or Infinity is a malformed number rather than a number out of range: 400, as /v1 says.
        status = 400 if any(e["type"] == "finite_number" for e in exc.errors()) else 422
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=status)
