"""The trace of one forward pass (`gptlab trace`, /api/trace): its stages are the model's own
numbers, in the order the data flows, for the classic and the modern variants; recording leaves the
math untouched; bad input is refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import assert_clean_error, cli_in_process
from gptlab.config import ModelConfig
from gptlab.inference.probs import next_token_probs
from gptlab.inference.trace import MAX_COLS, MAX_ROWS, at_position, axis_size, record_trace, trace_ids, view_stage
from gptlab.model import build_model
from gptlab.model.introspect import attention_maps
from gptlab.model.presets import MODERN_MODEL
from gptlab.model.record import Recorder, recording
from gptlab.runs import load_run
from gptlab.serve.app import create_app

PROMPT = "ROMEO:\nWhat say"
SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 65, "dropout": 0.0}
# The modern variants with every projection initialised (zero_init would make each block the identity
# and leave the residual identities nothing to check).
VARIANTS = {
    "modern-swiglu": {**MODERN_MODEL, "mlp": "swiglu", "zero_init": False, "logit_softcap": 15.0},
    "modern-relu2": {**MODERN_MODEL, "zero_init": False},
    # value_embeds lands on layer 1 of 2 (alternate layers ending at the last); resid_mix on both.
    "speedrun": {**MODERN_MODEL, "zero_init": False, "value_embeds": True, "resid_mix": True, "smear": True},
}


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run)


@pytest.fixture(scope="module", params=["classic", *VARIANTS])
def model(request, loaded):
    """The trained classic run's model, or a freshly initialised modern variant of the same shape."""
    if request.param == "classic":
        return loaded.model
    torch.manual_seed(0)
    return build_model(ModelConfig(**SHAPE, **VARIANTS[request.param])).eval()


def _trace(model, loaded, **kwargs):
    return trace_ids(model, loaded.tokenizer, loaded.tokenizer.encode(PROMPT), **kwargs)


def _stages(trace):
    return {s.name: s.value for s in trace.stages}


def test_logits_are_the_forward_output_and_probs_its_softmax(model, loaded):
    ids = loaded.tokenizer.encode(PROMPT)
    trace = _trace(model, loaded)
    names = [s.name for s in trace.stages]
    assert names[-2:] == ["logits", "probs"] and names[0] == "ids"
    assert len(names) == len(set(names))
    with torch.no_grad():
        expected, _ = model(torch.tensor([ids]))
    stages = _stages(trace)
    assert torch.equal(stages["logits"], expected[0])  # the recorded pass is the forward pass, bit for bit
    assert stages["ids"].tolist() == ids
    assert torch.allclose(stages["probs"].sum(-1), torch.ones(len(ids)), atol=1e-6)
    assert torch.all(stages["probs"] >= 0)
    assert trace.top[0].id == int(stages["probs"][-1].argmax())
    assert trace.top[0].prob == pytest.approx(next_token_probs(model, ids).max().item(), abs=1e-5)


def test_residual_identity_and_each_part_follows_from_the_last(model, loaded):
    trace = _trace(model, loaded)
    s = _stages(trace)
    x = s["embed"] if "embed" in s else s["wte"]
    x0 = x
    if "wpe" in s:
        assert torch.allclose(s["embed"], s["wte"] + s["wpe"])
    for i in range(model.config.n_layer):
        b = f"blocks.{i}"
        if f"{b}.resid_mix" in s:  # the block reads λ_resid·x + λ_x0·x0
            block = model.blocks[i]
            assert torch.allclose(s[f"{b}.resid_mix"], block.resid_lambda * x + block.x0_lambda * x0, atol=1e-6)
            x = s[f"{b}.resid_mix"]
        attn, mlp = s[f"{b}.attn.proj"], s[f"{b}.mlp.proj"]
        # output = input + attention part + MLP part, at every block
        assert torch.allclose(s[f"{b}.resid_attn"], x + attn, atol=1e-6)
        assert torch.allclose(s[f"{b}.resid_mlp"], x + attn + mlp, atol=1e-5)
        # The weighted values are the recorded weights applied to the recorded values: the weights
        # shown are the ones the fused kernel used.
        v = s.get(f"{b}.attn.v_mixed", s[f"{b}.attn.v"])  # with a value embedding: the values it mixed in
        assert torch.allclose(s[f"{b}.attn.weights"] @ v, s[f"{b}.attn.weighted"], atol=1e-5)
        if f"{b}.attn.v_mixed" in s:
            gate = s[f"{b}.attn.value_gate"].transpose(0, 1)[..., None]
            assert torch.allclose(v, s[f"{b}.attn.v"] + gate * s[f"{b}.attn.value_embed"], atol=1e-6)
        heads = s[f"{b}.attn.weighted"].transpose(0, 1).reshape(len(x), -1)
        assert torch.equal(s[f"{b}.attn.heads"], heads)
        x = s[f"{b}.resid_mlp"]
    norm = next(n for n in s if n.startswith("ln_f.") and not n.startswith("ln_f.in_"))
    if "ln_f.in_rms" in s:
        assert torch.allclose(s["ln_f.in_rms"], x.square().mean(-1).sqrt(), atol=1e-6)
    else:
        assert torch.allclose(s["ln_f.in_mean"], x.mean(-1), atol=1e-6)
        expected = (x - s["ln_f.in_mean"][:, None]) / torch.sqrt(s["ln_f.in_std"][:, None] ** 2 + model.ln_f.eps)
        assert torch.allclose(s[norm], expected * model.ln_f.weight + model.ln_f.bias, atol=1e-4)


def test_attention_is_causal_and_matches_the_explorer(model, loaded):
    trace = _trace(model, loaded)
    s = _stages(trace)
    T = len(trace.tokens)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    maps = attention_maps(model, loaded.tokenizer.encode(PROMPT))
    for i in range(model.config.n_layer):
        weights, masked = s[f"blocks.{i}.attn.weights"], s[f"blocks.{i}.attn.scores_masked"]
        assert torch.all(weights[:, future] == 0)  # above the diagonal: the future, never attended
        assert torch.all(weights[:, ~future] > 0)
        assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]), atol=1e-6)
        assert torch.all(masked[:, future] == -math.inf)
        assert torch.equal(masked[:, ~future], s[f"blocks.{i}.attn.scores"][:, ~future])
        assert torch.allclose(weights, maps[i], atol=1e-6)


def test_stages_are_the_variants_own_and_their_axes_their_shapes(model, loaded):
    trace = _trace(model, loaded)
    names = [s.name for s in trace.stages]
    cfg = model.config
    modern = cfg.position == "rope"
    assert ("wpe" in names) != modern and ("rotary.angles" in names) == modern
    assert ("blocks.0.attn.q_rope" in names) == modern and ("blocks.0.attn.q_norm" in names) == cfg.qk_norm
    assert ("blocks.1.ln_2.rmsnorm" in names) == (cfg.norm == "rmsnorm")
    assert ("blocks.1.ln_2.layernorm" in names) == (cfg.norm == "layernorm")
    assert f"blocks.1.mlp.{cfg.mlp}" in names
    assert ("blocks.0.mlp.gate" in names) == (cfg.mlp == "swiglu")
    assert ("logits_raw" in names) == bool(cfg.logit_softcap)
    ops = {s.name: s.op for s in trace.stages}
    assert ops["blocks.0.attn.qkv"].endswith(" + b") == cfg.bias  # a bias-free layer's operation has none
    # The data flows: embedding, then each block's norm, attention (q before its scores, scores before
    # the mask, the mask before the softmax), residual, norm, MLP, residual; then the head.
    order = [
        "wte",
        "blocks.0.ln_1.in_",
        "blocks.0.attn.qkv",
        "blocks.0.attn.q",
        "blocks.0.attn.scores",
        "blocks.0.attn.scores_masked",
        "blocks.0.attn.weights",
        "blocks.0.attn.weighted",
        "blocks.0.attn.heads",
        "blocks.0.attn.proj",
        "blocks.0.resid_attn",
        "blocks.0.ln_2.in_",
        "blocks.0.mlp.fc",
        f"blocks.0.mlp.{cfg.mlp}",
        "blocks.0.mlp.proj",
        "blocks.0.resid_mlp",
        "blocks.1.ln_1.in_",
        "ln_f.in_",
        "logits",
        "probs",
    ]
    positions = [
        next(i for i, n in enumerate(names) if n == want or (want.endswith("_") and n.startswith(want)))
        for want in order
    ]
    assert positions == sorted(positions)
    for stage in trace.stages:
        assert tuple(axis_size(a, trace.dims) for a in stage.axes.split()) == stage.shape, stage.name
        assert stage.op


def test_stages_are_those_recorded_before_the_layers_shared_their_recording_calls():
    """Name, module, axes and operation of every stage, as recorded (tests/golden/trace_stages.json) from
    the layers before recording became one call per stage and the two models shared their ends."""
    golden = json.loads((Path(__file__).parent / "golden" / "trace_stages.json").read_text(encoding="utf-8"))
    shape = {**SHAPE, "n_layer": 1}
    for name, variant in {"classic": {}, "modern": VARIANTS["modern-swiglu"]}.items():
        model = build_model(ModelConfig(**shape, **variant)).eval()
        recorder = Recorder(keep=lambda index, stage: False)
        with torch.no_grad(), recording(model, recorder):
            model(torch.arange(5)[None])
        assert [[s.name, s.module, s.axes, s.op] for s in recorder.stages] == golden[name]


def test_recording_off_leaves_the_output_bit_identical(model, loaded):
    ids = torch.tensor([loaded.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        before, _ = model(ids)
    trace = _trace(model, loaded)
    with torch.no_grad():
        after, _ = model(ids)
    assert torch.equal(before, after) and torch.equal(_stages(trace)["logits"], before[0])
    assert all(getattr(m, "record", None) is None for m in model.modules())


def test_cli_json_and_table(capsys, tiny_run, loaded):
    ids = loaded.tokenizer.encode(PROMPT)
    proc = cli_in_process(
        capsys, "trace", tiny_run, "--prompt", PROMPT.replace("\n", "\\n"), "--position", "3", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [t["id"] for t in out["tokens"]] == ids and out["position"] == 3
    assert [s["name"] for s in out["stages"]][-2:] == ["logits", "probs"]
    trace = _trace(loaded.model, loaded, position=3)
    for got, stage in zip(out["stages"], trace.stages, strict=True):
        assert got["name"] == stage.name and got["shape"] == list(stage.shape)
        values = json.loads(json.dumps(got["values"]).replace("null", "-Infinity"))  # JSON's stand-in for -inf
        assert torch.equal(torch.tensor(values, dtype=torch.float), at_position(stage, 3).float())
    probs3 = next_token_probs(loaded.model, ids[:4])  # position 3 predicts from the first 4 tokens
    assert out["top"][0]["id"] == int(probs3.argmax())

    table = cli_in_process(capsys, "trace", tiny_run, "--prompt", "ROMEO:")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    for stage in trace.stages:
        assert any(line.split()[:1] == [stage.name] for line in lines), stage.name
    assert lines[-1].startswith("next token after position 5:")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--prompt", ""], "prompt is empty"),
        (["--prompt", "ROMEO:", "--position", "6"], "out of range"),
        (["--prompt", "ROMEO:", "--position", "-1"], "out of range"),
        (["--prompt", "ROMEO:", "--top", "-1"], "--top -1 must be 0 or more"),
        (["--prompt", "a" * 33], "block_size=32"),
        (["--prompt", "caf\u00e9"], "not in this char tokenizer's vocabulary"),
    ],
)
def test_cli_bad_input(capsys, tiny_run, args, needle):
    assert_clean_error(cli_in_process(capsys, "trace", tiny_run, *args), needle)


def test_cli_not_a_run(capsys, tmp_path):
    assert_clean_error(cli_in_process(capsys, "trace", tmp_path, "--prompt", "hi"), str(tmp_path))


def test_page_view_is_sampled_for_a_large_model(loaded):
    # Long and wide enough that every kind of axis needs sampling: T=100 positions, 3C=192 channels.
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**SHAPE, "n_embd": 64, "n_head": 4, "block_size": 128})).eval()
    ids = [i % 65 for i in range(100)]
    record = record_trace(model, loaded.tokenizer, ids)
    names = [s["name"] for s in record.overview["stages"]]
    for name in ("blocks.1.attn.qkv", "blocks.1.attn.weights", "probs"):
        view = view_stage(record, stage=names.index(name), head=3)["stage"]
        assert view["name"] == name
        assert len(view["rows"]) <= MAX_ROWS and view["rows"][0] == 0 and view["rows"][-1] == 99
        assert all(len(row) == len(view["columns"]) <= MAX_COLS for row in view["values"])
    attention = view_stage(record, stage=names.index("blocks.1.attn.weights"), head=3)["stage"]
    assert attention["kind"] == "attention" and attention["heads"] == 4 and attention["head"] == 3
    rows, cols = attention["rows"], [int(c["label"]) for c in attention["columns"]]
    for r, row in zip(rows, attention["values"]):
        assert all((v == 0) == (c > r) for c, v in zip(cols, row) if v is not None)  # zero exactly in the future
    probs = view_stage(record, stage=len(names) - 1)
    assert [c["id"] for c in probs["stage"]["columns"]] == [c["id"] for c in probs["top"]]


def test_recorded_stages_are_the_forward_passs_own(model, loaded):
    # Every stage and head the record serves equals the stage of a plain recording of the same forward
    # pass, read at the rows and columns shown.
    ids = loaded.tokenizer.encode(PROMPT)
    record, whole = record_trace(model, loaded.tokenizer, ids, k=5), _trace(model, loaded, k=5)
    assert [s["name"] for s in record.overview["stages"]] == [s.name for s in whole.stages]
    for index, stage in enumerate(whole.stages):
        heads = stage.shape[0] if stage.axes.startswith("H ") else 1
        for head in range(heads):
            view = view_stage(record, index, head)["stage"]
            value = stage.value[head] if stage.axes.startswith("H ") else stage.value
            value = value[:, None] if value.dim() == 1 else value
            cols = [c["id"] if "id" in c else int(c["label"]) if c["label"].isdigit() else 0 for c in view["columns"]]
            expected = value[view["rows"]][:, cols].float().tolist()
            for got_row, row in zip(view["values"], expected, strict=True):
                assert got_row == [pytest.approx(v, rel=1e-3, abs=1e-6) if math.isfinite(v) else None for v in row]


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run)) as c:
        yield c


def test_api_trace_records_a_prompt_once_and_serves_its_stages(client, loaded):
    model, text = client.app.state.run.model, "First Citizen"
    record = record_trace(model, loaded.tokenizer, loaded.tokenizer.encode(text))
    heads = [1 if s["axes"][0] == "H" else 0 for s in record.overview["stages"]]  # a second head where there is one
    runs = []
    hook = model.register_forward_hook(lambda *_: runs.append(1))
    try:
        served = [client.post("/api/trace", json={"text": text, "stage": i, "head": h}) for i, h in enumerate(heads)]
        assert len(runs) == 1  # one forward pass recorded the prompt; every stage came from that record
        client.post("/api/trace", json={"text": text, "k": 3})  # other candidates: another record
        client.post("/api/trace", json={"text": "Second"})  # another prompt: another record
        client.post("/api/trace", json={"text": text, "stage": 3})  # still kept
        assert len(runs) == 3
    finally:
        hook.remove()
    for i, response in enumerate(served):
        assert response.status_code == 200 and response.json() == view_stage(record, i, heads[i])


def test_kept_records_are_bounded_in_bytes_and_count():
    import asyncio
    from types import SimpleNamespace

    from gptlab.serve.trace_api import TraceRecords

    made = []

    async def ask(records, key, nbytes):
        async def record():
            made.append(key)
            return SimpleNamespace(nbytes=nbytes)

        return await records.get(key, record)

    async def scenario():
        records = TraceRecords(max_bytes=100, max_records=2)
        for key in ("a", "b", "a", "c", "a", "b"):  # "c" pushes out "b" (the oldest), then "b" comes back
            await ask(records, key, 40)
        await ask(records, "big", 101)  # more than the bound alone: served, not kept
        await ask(records, "big", 101)
        return list(records._records)

    assert asyncio.run(scenario()) == ["a", "b"]
    assert made == ["a", "b", "c", "b", "big", "big"]


def test_api_trace_agrees_with_api_next(client, loaded):
    first = client.post("/api/trace", json={"text": PROMPT}).json()
    stages = first["stages"]
    assert [s["index"] for s in stages] == list(range(len(stages)))
    assert first["architecture"]["module"] == "GPT"
    blocks = next(c for c in first["architecture"]["children"] if c["name"] == "blocks")
    assert [b["module"] for b in blocks["children"]] == ["Block"] * 2
    assert [c["name"] for c in blocks["children"][0]["children"]] == [
        "blocks.0.ln_1",
        "blocks.0.attn",
        "blocks.0.ln_2",
        "blocks.0.mlp",
    ]
    owners = {s["name"]: s["owner"] for s in stages}
    assert set(owners.values()) >= {"blocks.0.ln_1", "blocks.0.attn", "blocks.0.mlp", "wte", "ln_f", ""}
    assert owners["blocks.1.attn.qkv"] == "blocks.1.attn.qkv" and owners["blocks.1.attn.weights"] == "blocks.1.attn"
    assert owners["logits"] == "lm_head" and owners["probs"] == "" and owners["ids"] == ""
    last = client.post("/api/trace", json={"text": PROMPT, "stage": len(stages) - 1}).json()["stage"]
    nxt = client.post("/api/next", json={"text": PROMPT, "k": 10}).json()
    assert last["name"] == "probs" and last["columns"][0]["id"] == nxt["candidates"][0]["id"]
    assert last["values"][-1][0] == pytest.approx(nxt["candidates"][0]["prob"], rel=1e-3)
    assert client.post("/api/trace", json={"text": PROMPT, "stage": len(stages)}).status_code == 400
    weights = next(s["index"] for s in stages if s["name"] == "blocks.0.attn.weights")
    assert client.post("/api/trace", json={"text": PROMPT, "stage": weights, "head": 2}).status_code == 400
    assert client.post("/api/trace", json={"text": ""}).status_code == 400
