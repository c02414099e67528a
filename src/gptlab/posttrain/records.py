"""Instruction and preference data as JSONL, read with every bad record counted and its reason kept.

Instruction records: {"prompt": ..., "response": ...} (an optional "system" too), or a chat
{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]} with at least one
assistant turn. Preference records: {"prompt": ..., "chosen": ..., "rejected": ...}. Prompt records
(what RL answers): {"prompt": ...} with an optional "system"; other fields (a "response") are ignored,
so instruction data serves as prompts too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gptlab.data.corpora import SkipReport
from gptlab.errors import GptlabError
from gptlab.fileio import bounded_lines
from gptlab.jsonfile import parse_json
from gptlab.posttrain.template import ROLES, Message

Item = TypeVar("Item")  # what one record parses to


@dataclass
class PreferencePair:
    """One prompt with a preferred and a dispreferred answer."""

    prompt: str
    chosen: str
    rejected: str


def json_lines(path: str | Path, report: SkipReport) -> Iterator[Any]:
    """One JSON value per non-blank line; lines that are not JSON are counted, not fatal."""
    p = Path(path)
    if not p.is_file():
        raise GptlabError(f"data file not found: {p}")
    with open(p, "rb") as fh:
        for raw in bounded_lines(fh, p):
            try:
                line = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                report.skip("line that is not UTF-8 text")
                continue
            if not line.strip():
                continue
            try:
                yield parse_json(line, "a line")
            except GptlabError:  # not JSON, nested too deep, a lone surrogate, NaN
                report.skip("line that is not valid JSON")


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def instruction(record: Any) -> tuple[list[Message] | None, str]:
    """A record as a conversation, or None and why it is unusable."""
    if not isinstance(record, dict):
        return None, "record that is not a JSON object"
    if "messages" in record:
        turns = record["messages"]
        if not isinstance(turns, list) or not turns:
            return None, "'messages' that is not a non-empty list"
        messages = []
        for turn in turns:
            if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
                return None, "message without a string 'content'"
            if turn.get("role") not in ROLES:
                return None, f"message with a role other than {', '.join(ROLES)}"
            messages.append(Message(turn["role"], turn["content"]))
        if not any(m.role == "assistant" and m.content.strip() for m in messages):
            return None, "conversation without an assistant answer"
        return messages, ""
    if not (_text(record.get("prompt")) and _text(record.get("response"))):
        return None, "record without non-empty 'prompt' and 'response' strings (nor 'messages')"
    system = [Message("system", record["system"])] if _text(record.get("system")) else []
    return [*system, Message("user", record["prompt"]), Message("assistant", record["response"])], ""


def preference(record: Any) -> tuple[PreferencePair | None, str]:
    """A record as a preference pair, or None and why it is unusable."""
    if not isinstance(record, dict):
        return None, "record that is not a JSON object"
    if not all(_text(record.get(k)) for k in ("prompt", "chosen", "rejected")):
        return None, "record without non-empty 'prompt', 'chosen' and 'rejected' strings"
    if record["chosen"] == record["rejected"]:
        return None, "record whose chosen and rejected answers are the same"
    return PreferencePair(record["prompt"], record["chosen"], record["rejected"]), ""


def prompt_record(record: Any) -> tuple[list[Message] | None, str]:
    """A record as the conversation to answer (a system message and the user's prompt), or None and why."""
    if not isinstance(record, dict):
        return None, "record that is not a JSON object"
    if not _text(record.get("prompt")):
        return None, "record without a non-empty 'prompt' string"
    system = [Message("system", record["system"])] if _text(record.get("system")) else []
    return [*system, Message("user", record["prompt"])], ""


def read_prompts(path: str | Path, report: SkipReport) -> list[list[Message]]:
    """Every usable prompt of a prompt JSONL file, as the conversation to answer (the others counted)."""
    return _read(path, report, prompt_record, "prompt")


def read_instructions(path: str | Path, report: SkipReport) -> list[list[Message]]:
    """Every usable conversation of an instruction JSONL file (the others counted in report)."""
    return _read(path, report, instruction, "instruction")


def read_preferences(path: str | Path, report: SkipReport) -> list[PreferencePair]:
    """Every usable pair of a preference JSONL file (the others counted in report)."""
    return _read(path, report, preference, "preference")


def _read(
    path: str | Path, report: SkipReport, parse: Callable[[Any], tuple[Item | None, str]], what: str
) -> list[Item]:
    out: list[Item] = []
    for record in json_lines(path, report):
        item, why = parse(record)
        if item is None:
            report.skip(why)
        else:
            out.append(item)
    if not out:
        details = "; ".join(report.lines()) or "the file is empty"
        raise GptlabError(f"{path} holds no usable {what} records ({details})")
    return out
