"""README.md of an exported model: what it is, what it was trained on, and how it did (from the run's files)."""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.runs import LoadedRun


def model_card(loaded: LoadedRun, arch: str, params: int) -> str:
    """The model card text: front matter for the Hub, then data, figures and a usage snippet."""
    from gptlab.report.history import read_history

    cfg, name = loaded.config.model, Path(loaded.path).resolve().name
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        f"tags: [gptlab, {arch}]",
        "---",
        f"# {name}",
        "",
        f"A {arch} causal language model of {params:,} parameters exported by gptlab from the run `{name}` "
        f"at step {loaded.step:,}.",
        "",
        f"Shape: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, context {cfg.block_size}, "
        f"vocabulary {cfg.vocab_size:,}; positions {cfg.position}, norm {cfg.norm}, MLP {cfg.mlp}, "
        f"QK-norm {'on' if cfg.qk_norm else 'off'}, embeddings {'tied' if cfg.tie_embeddings else 'untied'}.",
        "",
    ]
    try:
        hist = read_history(loaded.path)
    except GptlabError:
        hist = None
    lines += ["## Training data", ""]
    meta = hist.data_meta if hist else None
    if meta:
        tok = meta.get("tokenizer") or {}
        lines.append(
            f"Sources: {', '.join(map(str, meta.get('sources', []))) or 'unknown'}; tokenizer "
            f"{tok.get('kind', loaded.tokenizer.kind)} with {tok.get('vocab_size', cfg.vocab_size):,} ids."
        )
        lines += ["", "| split | documents | characters | tokens |", "| --- | --- | --- | --- |"]
        for split, s in (meta.get("splits") or {}).items():
            lines.append(
                f"| {split} | {s.get('documents', '?'):,} | {s.get('chars', '?'):,} | {s.get('tokens', '?'):,} |"
            )
    else:
        lines.append(f"No data summary in the run (tokenizer {loaded.tokenizer.kind}).")
    lines += ["", "## Training figures", ""]
    if hist:
        last = hist.metrics[-1]
        lines.append(
            f"Steps: {last.get('step', 0):,}; tokens seen: {last.get('tokens_seen', 0):,}; "
            f"optimizer {loaded.config.train.optimizer}, peak learning rate {loaded.config.train.lr}."
        )
        for loss in hist.final_losses():
            bpb = f", {loss.bits_per_byte:.4f} bits/byte" if loss.bits_per_byte is not None else ""
            lines.append(f"- {loss.split} loss at step {loss.step:,}: {loss.nats:.4f} nats/token{bpb}")
    else:
        lines.append("The run recorded no metrics (an imported checkpoint, or one not trained yet).")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(DIR)",
        "model = AutoModelForCausalLM.from_pretrained(DIR)",
        'ids = tok("Hello", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=50)[0]))",
        "```",
        "",
    ]
    return "\n".join(lines)
