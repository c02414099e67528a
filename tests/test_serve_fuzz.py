"""Fuzzing the server against its own OpenAPI schema (schemathesis): whatever a client sends that the
schema allows, or nearly allows, the server never answers 5xx and every answer matches the schema it
documents. A tiny random-weight model, a handful of examples per route: seconds, not minutes."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from gptlab.config import build_config
from gptlab.fileio import atomic_write_json
from gptlab.model import build_model
from gptlab.posttrain.template import add_chat_tokens
from gptlab.runs import CONFIG, TOKENIZER, WEIGHTS, save_weights
from gptlab.tokenizers import CharTokenizer

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory, shakespeare_txt):
    from gptlab.serve.app import create_app

    path = tmp_path_factory.mktemp("fuzz") / "tiny"
    tokenizer = add_chat_tokens(CharTokenizer(shakespeare_txt.read_text(encoding="utf-8")[:5000]))
    cfg = build_config(
        None,
        None,
        ["n_layer=1", "n_head=2", "n_embd=16", "block_size=16", "dropout=0.0", f"vocab_size={tokenizer.vocab_size}"],
    )
    torch.manual_seed(0)
    path.mkdir()
    atomic_write_json(path / CONFIG, cfg.to_dict())
    tokenizer.save(path / TOKENIZER)
    save_weights(build_model(cfg.model), path / WEIGHTS, step=0)
    app = create_app(path, "cpu", max_tokens_limit=8)
    yield app
    app.state.service.stop()


def test_no_5xx_and_answers_match_the_schema(app):
    # Each route's cases drawn from its schema by hypothesis (schemathesis's pytest plugin is not used:
    # its fixture loader trips on the pytest this project pins).
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/api/next", "/health"}
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=8, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case):
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

        check()
