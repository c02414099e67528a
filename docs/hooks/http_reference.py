"""The HTTP API reference page, written from the OpenAPI schema of the app `gptlab serve` runs.

The app is built by gptlab.serve.app.create_app on a throwaway run (a one-step model on a few lines
of text, made here), so the page lists exactly the routes, request fields and responses the server
has. Every operation gets a section with a fixed anchor (`#post-v1-completions`); routes the schema
leaves out (the page itself, /metrics) are listed at the end from the app's route table.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from cli_reference import escape

METHODS = ("get", "post", "put", "patch", "delete")

TEXT = {
    "en": {
        "title": "HTTP API",
        "intro": (
            "The routes of `gptlab serve RUN`, generated from the server's own OpenAPI schema when the site "
            "is built, so every path, field and response here is one the server has. Bodies are JSON; the "
            "server also shows this schema at `/openapi.json` and `/docs` while it runs. How to start it: "
            "[`gptlab serve`](commands.md#serve)."
        ),
        "routes": "Routes",
        "table": "| Route | What it does |",
        "body": "Request body",
        "query": "Query parameters",
        "path": "Path parameters",
        "responses": "Responses",
        "header": "| Field | Type | Default | Description |",
        "required": "required",
        "schemas": "Response schemas",
        "other": "Also served",
        "other_intro": "Routes outside the schema (the exploration page, its files, Prometheus metrics):",
    },
    "zh": {
        "title": "HTTP API",
        "intro": (
            "`gptlab serve RUN` 提供的全部路由。本页在构建网站时由服务器自己的 OpenAPI 模式生成，所以这里的每个路径、"
            "字段和响应都是服务器真有的；字段说明保留英文原文。请求体都是 JSON；服务器运行时也在 `/openapi.json` 和 "
            "`/docs` 给出同一份模式。启动方法见 [`gptlab serve`](commands.md#serve)。"
        ),
        "routes": "路由一览",
        "table": "| 路由 | 作用 |",
        "body": "请求体",
        "query": "查询参数",
        "path": "路径参数",
        "responses": "响应",
        "header": "| 字段 | 类型 | 默认值 | 说明 |",
        "required": "必填",
        "schemas": "响应的模式",
        "other": "其他路由",
        "other_intro": "不在模式里的路由（探索页面、它的静态文件、Prometheus 指标）：",
    },
}


def tiny_run(root: Path) -> Path:
    """A run trained for one step on a few lines of text: enough for create_app to load."""
    from gptlab.config import build_config
    from gptlab.data.prepare import prepare
    from gptlab.train.trainer import train

    (root / "text.txt").write_text("A few words for a model that only needs to exist.\n" * 20, encoding="utf-8")
    settings = ["n_layer=1", "n_head=1", "n_embd=8", "block_size=8", "batch_size=2", "max_steps=1"]
    settings += ["eval_batches=1", "sample_tokens=0", "device=cpu"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        prepare([str(root / "text.txt")], root / "data", "char", progress=False)
        cfg = build_config("cpu-tiny", None, settings)
        cfg.data = str(root / "data")
        train(cfg, root / "run")
    return root / "run"


def server_routes() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The OpenAPI schema of the served app, and (methods, path) of the routes it leaves out."""
    from gptlab.serve.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(tiny_run(Path(tmp)), device="cpu")
        try:
            schema = app.openapi()
            hidden = [
                (methods, path)
                for methods, path, in_schema in _routes(app.routes)
                if not in_schema and not path.startswith(("/openapi", "/docs", "/redoc"))
            ]
        finally:
            app.state.service.stop()
    return schema, hidden


def _routes(routes: list[Any]) -> list[tuple[str, str, bool]]:
    """(methods, path, shown in the schema) of every route. FastAPI keeps an included router as one
    entry whose effective_route_contexts() are its routes with their prefixes applied."""
    found = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        for item, owner in [(c, c.original_route) for c in contexts()] if contexts else [(route, route)]:
            methods = ",".join(sorted(m for m in getattr(owner, "methods", None) or ["GET"] if m != "HEAD"))
            found.append((methods, item.path, bool(getattr(item, "include_in_schema", True))))
    return found


def anchor(method: str, path: str) -> str:
    """`post`, `/v1/completions` -> `post-v1-completions`."""
    return "-".join([method.lower(), *re.findall(r"[a-z0-9]+", path.lower())])


class _Schemas:
    """Reads types out of the schema, following $ref into components; the components that responses
    name (ErrorBody ...) get a section of their own, and their names link to it."""

    def __init__(self, schema: dict[str, Any]):
        self.components = schema.get("components", {}).get("schemas", {})
        responses = [
            response
            for item in schema.get("paths", {}).values()
            for method, op in item.items()
            if method in METHODS
            for response in op.get("responses", {}).values()
        ]
        self.shown = self._referenced(responses)

    def _referenced(self, nodes: list[Any]) -> list[str]:
        """Names of the components nodes refer to, directly or through other components, in order."""
        found: list[str] = []
        stack = list(nodes)
        while stack:
            node = stack.pop(0)
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.rsplit("/", 1)[-1] not in found:
                    found.append(ref.rsplit("/", 1)[-1])
                    stack.append(self.components.get(found[-1], {}))
                stack += list(node.values())
            elif isinstance(node, list):
                stack += node
        return found

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return self.components[ref.rsplit("/", 1)[-1]] if ref else node

    def type_name(self, node: dict[str, Any]) -> str:
        """A short type in Markdown: string, integer, array of string, object, a linked ErrorBody, ..."""
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            return f"[{name}](#{schema_anchor(name)})" if name in self.shown else name
        if "anyOf" in node or "oneOf" in node:
            kinds = [self.type_name(k) for k in node.get("anyOf", node.get("oneOf", []))]
            return " or ".join(dict.fromkeys(kinds))
        if "enum" in node:
            return ", ".join(f"`{v}`" for v in node["enum"])
        if "const" in node:
            return f"`{node['const']}`"
        kind = node.get("type", "any")
        if kind == "array":
            return f"array of {self.type_name(node.get('items', {}))}"
        return escape(str(kind))

    @staticmethod
    def constraints(node: dict[str, Any]) -> str:
        """>= 0, <= 2, items <= 32, ... (also inside anyOf)."""
        names = {
            "minimum": ">=",
            "maximum": "<=",
            "exclusiveMinimum": ">",
            "exclusiveMaximum": "<",
            "minLength": "length >=",
            "maxLength": "length <=",
            "minItems": "items >=",
            "maxItems": "items <=",
        }
        found = []
        for part in [node, *node.get("anyOf", [])]:
            found += [f"{sign} {_number(part[key])}" for key, sign in names.items() if key in part]
        return ", ".join(found)

    def fields(self, node: dict[str, Any], header: str, required_word: str) -> list[str]:
        """A table of the properties of an object schema."""
        node = self.resolve(node)
        props = node.get("properties", {})
        if not props:
            return []
        required = set(node.get("required", []))
        rows = [header, "| --- | --- | --- | --- |"]
        for name, prop in props.items():
            default = f"`{_json(prop['default'])}`" if "default" in prop else ""
            notes = [required_word] if name in required else []
            notes += [escape(c) for c in [self.constraints(prop)] if c]
            notes += [escape(" ".join(prop["description"].split()))] if prop.get("description") else []
            rows.append(f"| `{name}` | {self.type_name(prop)} | {default} | {'; '.join(notes)} |")
        return [*rows, ""]


def schema_anchor(name: str) -> str:
    """`ErrorBody` -> `schema-errorbody`."""
    return "schema-" + name.lower()


def _described(parameter: dict[str, Any]) -> dict[str, Any]:
    """A parameter's description, where it has one, in the place a property keeps it."""
    return {"description": parameter["description"]} if "description" in parameter else {}


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _gist(op: dict[str, Any]) -> str:
    """What an operation does in a few words: the first sentence of its docstring, else its summary."""
    flat = " ".join((op.get("description") or op.get("summary") or "").split())
    return re.split(r"(?<=[.:;])\s", flat, maxsplit=1)[0].rstrip(".:;")


def _operation(method: str, path: str, op: dict[str, Any], schemas: _Schemas, text: dict[str, str]) -> list[str]:
    lines = [f"## {method.upper()} {path} {{#{anchor(method, path)}}}", ""]
    summary = op.get("description") or op.get("summary") or ""
    if summary:
        lines += [escape(" ".join(summary.split())), ""]
    for where, title in (("path", text["path"]), ("query", text["query"])):
        params = [p for p in op.get("parameters", []) if p.get("in") == where]
        if params:
            props = {p["name"]: {**p.get("schema", {}), **_described(p)} for p in params}
            required = [p["name"] for p in params if p.get("required")]
            lines += [f"**{title}**", ""]
            lines += schemas.fields({"properties": props, "required": required}, text["header"], text["required"])
    body = op.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        lines += [f"**{text['body']}** (`{media}`)", ""]
        lines += schemas.fields(content.get("schema", {}), text["header"], text["required"])
    lines += [f"**{text['responses']}**", ""]
    for status, response in op.get("responses", {}).items():
        content = response.get("content", {})
        kinds = [f"`{media}` {schemas.type_name(c.get('schema', {}))}" for media, c in content.items()]
        description = escape(" ".join(response.get("description", "").split()))
        lines.append(f"- `{status}` {description}" + (f": {', '.join(kinds)}" if kinds else ""))
    return [*lines, ""]


def render(schema: dict[str, Any], hidden: list[tuple[str, str]], lang: str) -> str:
    """The whole HTTP API page in lang ("en" or "zh")."""
    text = TEXT[lang]
    schemas = _Schemas(schema)
    operations = [
        (method, path, op)
        for path, item in schema.get("paths", {}).items()
        for method, op in item.items()
        if method in METHODS
    ]
    lines = [
        f"# {text['title']}",
        "",
        "<!-- Generated by docs/hooks/http_reference.py from the OpenAPI schema at build time; do not edit. -->",
        "",
        text["intro"],
        "",
        f"## {text['routes']} {{#routes}}",
        "",
        text["table"],
        "| --- | --- |",
        *[f"| [`{m.upper()} {p}`](#{anchor(m, p)}) | {escape(_gist(op))} |" for m, p, op in operations],
        "",
    ]
    for method, path, op in operations:
        lines += _operation(method, path, op, schemas, text)
    if schemas.shown:
        lines += [f"## {text['schemas']} {{#schemas}}", ""]
        for name in schemas.shown:
            node = schemas.components.get(name, {})
            lines += [f"### {name} {{#{schema_anchor(name)}}}", ""]
            if node.get("description"):
                lines += [escape(" ".join(node["description"].split())), ""]
            lines += schemas.fields(node, text["header"], text["required"])
    if hidden:
        lines += [f"## {text['other']} {{#other-routes}}", "", text["other_intro"], ""]
        lines += [f"- `{methods} {path}`" for methods, path in hidden]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
