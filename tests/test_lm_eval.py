"""lm-evaluation-harness, the harness the field evaluates with, against gptlab: `lm_eval --model
local-completions` on a live `gptlab serve` (the server's own tokenizer through /tokenize, and the
export's tokenizer.json on the harness's side), and `--model hf` on the export of the same run,
both on a tiny local task built from the repo's text.
Their loglikelihoods must be the ones gptlab's model gives through its own training loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_env, serving
from gptlab.inference.decoding import SamplingParams
from gptlab.inference.engine import generate_steps
from gptlab.interop.export import export_run
from gptlab.model.loss import IGNORE
from gptlab.runs import load_run
from gptlab.tokenizers import BPETokenizer
from test_interop import make_run

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: {kind}
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
"""
GENERATE = """generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def harness_setup(tmp_path_factory, shakespeare_txt):
    """A bpe run (random weights: only agreement matters), its export, and a task directory."""
    root = tmp_path_factory.mktemp("lm-eval")
    text = shakespeare_txt.read_text(encoding="utf-8")
    tok = BPETokenizer.train([text[:100_000]], vocab_size=400)
    run, _ = make_run(root / "shakespeare", [], tok)
    lines = [line for line in text[:3000].splitlines() if len(line) > 20][:3]
    docs = [{"context": line[:12], "continuation": line[12:20]} for line in lines]
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "ll.yaml").write_text(TASK.format(name="gptlab_ll", docs=root / "docs.jsonl", kind="loglikelihood"))
    (tasks / "gen.yaml").write_text(
        TASK.format(name="gptlab_gen", docs=root / "docs.jsonl", kind="generate_until") + GENERATE
    )
    return run, export_run(run, root / "export"), tasks, docs, root


def gptlab_loglikelihood(run: Path, context: str, continuation: str) -> float:
    """log P(continuation | context) from the model's own loss over the continuation's tokens, split
    as the harness splits them: the whole text encoded, the context's own token count cut off."""
    loaded = load_run(run)
    spaces = len(context) - len(context.rstrip())  # the harness moves a context's trailing spaces over
    context, continuation = context[: len(context) - spaces], context[len(context) - spaces :] + continuation
    ids, n_ctx = loaded.tokenizer.encode(context + continuation), len(loaded.tokenizer.encode(context))
    cont = ids[n_ctx:]
    targets = [IGNORE] * (n_ctx - 1) + cont + [IGNORE]
    with torch.no_grad():
        _, loss = loaded.model(torch.tensor([ids]), torch.tensor([targets]))
    return -loss.item() * len(cont)


def samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])


def test_lm_eval_scores_the_server_and_the_export_as_gptlab_does(harness_setup):
    run, export, tasks, docs, root = harness_setup
    env = cli_env() | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    import lm_eval
    from lm_eval.tasks import TaskManager

    with serving(run) as base:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "lm_eval",
                "--model",
                "local-completions",
                "--model_args",
                f"model={run.name},base_url={base}/v1/completions,max_length=33,tokenized_requests=True",
                "--tasks",
                "gptlab_ll,gptlab_gen",
                "--include_path",
                str(tasks),
                "--output_path",
                str(root / "api"),
                "--log_samples",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "remote tokenizer" in proc.stderr.lower()  # it took the server's /tokenize, not a guess
        # The other way to split context from continuation: the exported tokenizer.json, on the
        # harness's side (tokenizer_backend=huggingface), against the same server.
        hf_tok = lm_eval.simple_evaluate(
            model="local-completions",
            tasks=["gptlab_ll"],
            task_manager=TaskManager(include_path=str(tasks)),
            model_args=f"model={run.name},base_url={base}/v1/completions,max_length=33,tokenized_requests=True,"
            f"tokenizer_backend=huggingface,tokenizer={export}",
            log_samples=True,
        )

    hf = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={export},dtype=float32,device=cpu",
        tasks=["gptlab_ll"],
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
    )
    hf_ll = [float(s["resps"][0][0][0]) for s in sorted(hf["samples"]["gptlab_ll"], key=lambda s: s["doc_id"])]
    api_ll = [float(s["resps"][0][0][0]) for s in samples(root / "api", "gptlab_ll")]
    hf_tok_ll = [float(s["resps"][0][0][0]) for s in sorted(hf_tok["samples"]["gptlab_ll"], key=lambda s: s["doc_id"])]
    ours = [gptlab_loglikelihood(run, d["context"], d["continuation"]) for d in docs]
    assert api_ll == pytest.approx(ours, abs=1e-3) and hf_ll == pytest.approx(ours, abs=1e-3)
    assert hf_tok_ll == pytest.approx(ours, abs=1e-3)
    loaded = load_run(run)
    for doc, sample in zip(docs, samples(root / "api", "gptlab_gen")):
        steps = generate_steps(
            loaded.model,
            loaded.tokenizer,
            [loaded.tokenizer.encode(doc["context"])],
            SamplingParams(6, temperature=0, stop=["\n"]),
        )
        assert sample["resps"][0][0] == "".join(s[0].text for s in steps)  # the engine's greedy text
