"""The page's words: every text it shows exists in English and in Chinese, and the walkthrough has its own
text for every stage of every model variant (classic, RoPE + RMSNorm + QK-norm + SwiGLU + soft-cap, ReLU²,
the encoder–decoder), lighting the right component of the diagram. The walkthrough's rule (walkthrough.js)
runs in node on the stages the models really record; the browser test (test_page_learn_browser.py) walks
them on a served run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.model import build_model
from gptlab.model.record import Recorder, recording

STATIC = Path(__file__).resolve().parents[1] / "src" / "gptlab" / "serve" / "static"
NAMESPACES = "page lang info prompt tab common next attention embeddings trace diagram walk train history encdec"
KEY = re.compile(r"[\"'`]((?:" + "|".join(NAMESPACES.split()) + r")\.[a-z_.]+)[\"'`]")
CJK = re.compile(r"[\u4e00-\u9fff]")

VARIANTS = {
    "classic": {},
    "modern": dict(
        position="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_embeddings=False, logit_softcap=15.0
    ),
    "relu2": dict(mlp="relu2", norm="rmsnorm", bias=False),
    "gelu_tanh": dict(mlp="gelu_tanh"),
    "encdec": dict(arch="encdec"),
}


def _node(script: str) -> object:
    node = shutil.which("node")
    assert node is not None, "node is missing: `make test` installs it (Debian's npm)"
    proc = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _texts() -> dict[str, dict[str, str]]:
    """TEXTS of i18n.js, read by node (the file's own object, not a parse of it)."""
    source = (STATIC / "i18n.js").read_text()
    source = source[: source.index("const i18n")]  # the dictionary alone: the rest needs a browser
    return _node(f"{source}\nprocess.stdout.write(JSON.stringify(TEXTS));")


def test_every_text_in_both_languages():
    texts = _texts()
    assert set(texts["en"]) == set(texts["zh"])
    for key, chinese in texts["zh"].items():
        # Same placeholders, and the Chinese text is Chinese (names like RMSNorm aside).
        assert sorted(re.findall(r"\{\w+\}", chinese)) == sorted(re.findall(r"\{\w+\}", texts["en"][key])), key
        if key not in {"lang.switch", "lang.switch_title"} and CJK.search(texts["en"][key]) is None:
            assert CJK.search(chinese) or chinese == texts["en"][key], key
    # Every key the page and its scripts use is defined: index.html's data-i18n* and the scripts' literals.
    html = (STATIC / "index.html").read_text()
    used = set(re.findall(r'data-i18n(?:-title|-placeholder|-aria)?="([^"]+)"', html))
    for script in STATIC.glob("*.js"):
        if script.name != "i18n.js":
            used |= set(KEY.findall(script.read_text()))
    used |= {"walk.where.block", "walk.where.encoder", "walk.where.decoder"}  # built as walk.where.${kind}
    assert used - set(texts["en"]) == set()
    # Every static label of the page is marked for translation: no bare English text between tags.
    bare = [m.strip() for m in re.findall(r">([^<>]*[A-Za-z]{3,}[^<>]*)<", html) if m.strip()]
    marked = set(re.findall(r'<[^>]*\bdata-i18n="[^"]+"[^>]*>([^<]*)<', html))
    marked |= {texts["en"]["page.title"], "gptlab", "ROMEO:"}  # the title is set by i18n.js; a name; a prompt
    assert [b for b in bare if b not in marked] == []


def _stages(kwargs: dict) -> list[dict[str, str]]:
    cfg = ModelConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=8, **kwargs)
    model = build_model(cfg)
    recorder = Recorder()
    with torch.no_grad(), recording(model, recorder):
        if cfg.arch == "encdec":
            model(torch.zeros(1, 3, dtype=torch.long), source=torch.zeros(1, 4, dtype=torch.long))
        else:
            model(torch.zeros(1, 4, dtype=torch.long))
    names = [{"name": s.name, "op": s.op} for s in recorder.stages]
    return names + [{"name": "probs", "op": "softmax of logits over V"}]  # added by inference/trace.py


def _walk(stages: list[dict[str, str]]) -> list[dict]:
    source = (STATIC / "walkthrough.js").read_text()
    script = (
        f"{source}\nconst stages = {json.dumps(stages)};\n"
        "process.stdout.write(JSON.stringify(stages.map((s) => { const c = conceptOf(s);"
        " return { name: s.name, concept: c, part: partOf(s), block: blockOf(s), en: CONCEPTS[c].en,"
        " zh: CONCEPTS[c].zh, formula: CONCEPTS[c].formula }; })));"
    )
    return _node(script)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_walkthrough_explains_every_stage(variant):
    walked = _walk(_stages(VARIANTS[variant]))
    by_name = {}
    for w in walked:
        assert w["concept"] != "other", f"{variant}: no walkthrough text for {w['name']}"
        assert w["formula"] and all(w[lang][0] and len(w[lang][1]) > 20 for lang in ("en", "zh")), w["name"]
        assert CJK.search(w["zh"][1]) and not CJK.search(w["en"][1])
        by_name.setdefault(w["name"], w)
    concepts = {w["concept"] for w in walked}
    # A variant's own components are explained when present, and only then.
    present = {
        "rope": "rope" in concepts and "rope_angles" in concepts,
        "rms": "rmsnorm" in concepts,
        "qk": "qk_norm" in concepts,
        "swiglu": "swiglu" in concepts,
        "relu2": "relu2" in concepts,
        "softcap": "softcap" in concepts,
        "cross": "cross" in concepts,
        "position": "position" in concepts,
    }
    cfg = VARIANTS[variant]
    assert present["rope"] == (cfg.get("position") == "rope")
    assert present["position"] == (cfg.get("position") != "rope")
    assert present["rms"] == (cfg.get("norm") == "rmsnorm") != ("layernorm" in concepts)
    assert present["qk"] == cfg.get("qk_norm", False)
    assert present["swiglu"] == (cfg.get("mlp") == "swiglu")
    assert present["relu2"] == (cfg.get("mlp") == "relu2")
    assert ("gelu" in concepts) == (cfg.get("mlp", "gelu") in ("gelu", "gelu_tanh"))
    assert present["softcap"] == bool(cfg.get("logit_softcap"))
    assert present["cross"] == (cfg.get("arch") == "encdec")
    # The diagram lights the component that computed the stage.
    first = "encoder" if cfg.get("arch") == "encdec" else "blocks"
    assert by_name["ids"]["part"] == "tokens" and by_name["probs"]["part"] == "softmax"
    assert by_name[f"{first}.1.attn.weights"]["part"] == "attention"
    assert by_name[f"{first}.1.attn.weights"]["block"] == ["block" if first == "blocks" else "encoder", 1]
    assert by_name[f"{first}.0.resid_attn"]["part"] == "add1" and by_name[f"{first}.0.resid_mlp"]["part"] == "add2"
    assert by_name[f"{first}.0.mlp.proj"]["part"] == "mlp"
    norm = "rmsnorm" if cfg.get("norm") == "rmsnorm" else "layernorm"
    assert by_name[f"{first}.0.ln_1.{norm}"]["part"] == "norm1" and by_name[f"{first}.0.ln_2.{norm}"]["part"] == "norm2"
    assert by_name[f"ln_f.{norm}"]["part"] == "final_norm"
    if cfg.get("arch") == "encdec":
        assert by_name["decoder.0.cross.weighted"]["part"] == "cross"
        assert by_name["decoder.0.ln_cross.layernorm"]["part"] == "cross"
