"""The page's JSON endpoints give the same numbers as the library functions behind
`gptlab sample --show-probs` (next_token_probs / top_candidates), and refuse bad input clearly."""

import json
import re

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import assert_clean_error, cli_in_process
from gptlab.inference.probs import next_token_probs, top_candidates
from gptlab.model.embedding_map import nearest_neighbours, pca_2d
from gptlab.model.introspect import attention_maps
from gptlab.serve.app import create_app

PROMPT = "ROMEO:\nWhat"


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run)) as c:
        yield c


@pytest.fixture(scope="module")
def run(client):
    return client.app.state.run


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_next_matches_next_token_probs(client, run, temperature):
    got = client.post("/api/next", json={"text": PROMPT, "k": 5, "temperature": temperature}).json()
    ids = run.tokenizer.encode(PROMPT)
    assert [(t["id"], t["piece"]) for t in got["tokens"]] == [(i, run.tokenizer.id_to_piece(i)) for i in ids]
    expected = top_candidates(run.tokenizer, next_token_probs(run.model, ids, temperature), 5)
    assert [(c["id"], c["piece"]) for c in got["candidates"]] == [(c.id, c.piece) for c in expected]
    assert [c["prob"] for c in got["candidates"]] == pytest.approx([c.prob for c in expected], abs=1e-7)
    assert 0 < sum(c["prob"] for c in got["candidates"]) <= 1


def test_step_greedy_sample_and_chosen_token(client, run):
    ids = run.tokenizer.encode(PROMPT)
    probs = next_token_probs(run.model, ids)
    greedy = client.post("/api/step", json={"text": PROMPT, "mode": "greedy"}).json()
    assert greedy["token"]["id"] == int(probs.argmax())
    assert greedy["text"] == PROMPT + run.tokenizer.id_to_piece(int(probs.argmax()))
    assert greedy["token"]["prob"] == pytest.approx(probs.max().item())

    chosen = client.post("/api/step", json={"text": PROMPT, "mode": "token", "token_id": 7}).json()
    assert chosen["text"] == PROMPT + run.tokenizer.id_to_piece(7)

    hot = next_token_probs(run.model, ids, 1.5)
    draws = [
        client.post("/api/step", json={"text": PROMPT, "mode": "sample", "temperature": 1.5, "seed": s}).json()[
            "token"
        ]["id"]
        for s in range(6)
    ]
    assert draws == [int(torch.multinomial(hot, 1, generator=torch.Generator().manual_seed(s))) for s in range(6)]


def test_attention_endpoint_matches_attention_maps(client, run):
    got = client.post("/api/attention", json={"text": PROMPT, "layer": 1, "head": 0}).json()
    ids = run.tokenizer.encode(PROMPT)
    weights = torch.tensor(got["weights"])
    assert weights.shape == (len(ids), len(ids)) and len(got["tokens"]) == len(ids)
    assert torch.allclose(weights, attention_maps(run.model, ids)[1, 0], atol=1e-5)
    assert torch.all(torch.triu(weights, diagonal=1) == 0)
    long = "a" * (run.config.model.block_size + 5)  # only the context window is shown
    assert len(client.post("/api/attention", json={"text": long}).json()["weights"]) == run.config.model.block_size


def test_embeddings_and_neighbours(client, run, monkeypatch):
    import gptlab.serve.explore as explore

    projections = []
    monkeypatch.setattr(explore, "pca_2d", lambda weight: projections.append(1) or pca_2d(weight))
    got = client.get("/api/embeddings").json()
    assert client.get("/api/embeddings").json() == got and len(projections) <= 1  # once per served run
    points, _ = pca_2d(run.model.wte.weight)
    assert [p["id"] for p in got["points"]] == list(range(run.tokenizer.vocab_size))
    assert torch.allclose(torch.tensor([[p["x"], p["y"]] for p in got["points"]]), points, atol=1e-4)
    near = client.get("/api/neighbours", params={"id": 3, "k": 4}).json()
    assert [n["id"] for n in near["neighbours"]] == [i for i, _ in nearest_neighbours(run.model.wte.weight, 3, 4)]


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/api/next", {"text": "caf\u00e9"}, 400, "not in this char tokenizer's vocabulary"),
        ("/api/next", {"text": ""}, 400, "prompt is empty"),
        ("/api/next", {"text": "a" * 100_000}, 400, "at most 3,200 are accepted"),  # tiny run: context 32
        ("/api/next", {"text": "a", "k": 0}, 422, "greater than or equal to 1"),
        ("/api/step", {"text": "a", "mode": "token"}, 400, "needs a token_id"),
        ("/api/step", {"text": "a", "mode": "flip"}, 422, "greedy"),
        ("/api/attention", {"text": "a", "layer": 9}, 400, "layer must be <"),
    ],
)
def test_bad_requests_say_why(client, path, body, status, message):
    response = client.post(path, json=body)
    assert response.status_code == status
    assert message in str(response.json()["detail"])


def test_page_and_static_files_are_served_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="prompt"' in page.text
    # Everything the page loads comes from this server: no CDN, works offline.
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith("/static/") for r in refs)
    for ref in refs:
        asset = client.get(ref)
        text = asset.text.replace("http://www.w3.org/2000/svg", "")  # a namespace name, never fetched
        assert asset.status_code == 200 and "http://" not in text and "https://" not in text
    assert client.get("/static/..%2Fapp.py").status_code == 404
    assert client.get("/api/neighbours", params={"id": 10_000}).status_code == 400


def test_serve_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert_clean_error(cli_in_process(capsys, "serve", tmp_path, "--port", "1"), "not a gptlab run")


def test_next_matches_what_sample_show_probs_prints(client, capsys, tiny_run):
    # The page's bar chart and `gptlab sample --show-probs` describe the same first choice.
    page = client.post("/api/next", json={"text": PROMPT, "k": 5, "temperature": 1.0}).json()["candidates"]
    proc = cli_in_process(
        capsys,
        "sample",
        tiny_run,
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "1",
        "--temperature",
        "1.0",
        "--show-probs",
        "5",
        "--json",
        "--seed",
        "0",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["step"] == 1
    assert [(c["id"], c["piece"]) for c in first["candidates"]] == [(c["id"], c["piece"]) for c in page]
    assert [c["prob"] for c in first["candidates"]] == pytest.approx([c["prob"] for c in page], abs=1e-6)
