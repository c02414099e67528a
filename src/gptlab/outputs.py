"""Where a command may write: the one rule every writer follows, checked before any work.

    A command never writes over its input: an output file is never one of its input files, and an
    output directory never is, holds or lies inside one of its inputs. It writes only into a new or
    empty directory or one of the kind it makes (a run for train, finetune, align and import; a
    dataset for prepare; a sweep's directory for sweep). Two outputs of one command never share a
    path. Anything else is refused in one line, before anything is read or written.

Each writer names what it reads and what it writes; what makes a directory "a run" or "a dataset"
is said where those directories are defined (runs.is_run_dir, data/publish.is_dataset_dir).
Staged outputs (a directory written beside its target under a temporary name, then renamed into
place) use staged_directory, which also sweeps what a killed writer left there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.fileio import plain_mode

LOCK_FILE = ".gptlab.lock"  # locks.LOCK_FILE, which may stay behind in a directory with nothing else


def _real(path: str | Path) -> Path:
    """The path with links and '..' resolved, so two spellings of one place compare equal."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


Inputs = Sequence[tuple[str, "str | Path | None"]]  # what a command reads: (how the user named it, its path)


def _existing(inputs: Inputs) -> list[tuple[str, Path]]:
    """The inputs that are paths on disk (corpus names such as `tang-poems` are not)."""
    return [(name, Path(p)) for name, p in inputs if p and Path(p).expanduser().exists()]


def is_empty_dir(path: str | Path) -> bool:
    """A directory with nothing in it but, at most, the lock file a refused writer left."""
    return Path(path).is_dir() and {p.name for p in Path(path).iterdir()} <= {LOCK_FILE}


def check_not_input(out: str | Path, inputs: Inputs, flag: str = "--out") -> None:
    """Refuse an output that is one of the inputs, holds one, or (a directory output) lies in one."""
    real_out = _real(out)
    for name, given in _existing(inputs):
        real_in = _real(given)
        if real_out == real_in or (real_out.exists() and os.path.samefile(real_out, real_in)):
            raise GptlabError(f"{flag} {out} is what this command reads ({name} {given}): writing it would destroy it")
        if _inside(real_in, real_out):
            raise GptlabError(f"{flag} {out} holds what this command reads ({name} {given}); choose another {flag}")
        if real_in.is_dir() and _inside(real_out, real_in):
            raise GptlabError(
                f"{flag} {out} lies inside what this command reads ({name} {given}); choose another {flag}"
            )


def check_output_file(out: str | Path, inputs: Inputs, flag: str = "--out") -> None:
    """An output file: never an input, never an existing directory (an existing file is replaced)."""
    real_out = _real(out)
    for name, given in _existing(inputs):
        if real_out == _real(given) or (real_out.exists() and os.path.samefile(real_out, given)):
            raise GptlabError(f"{flag} {out} is what this command reads ({name} {given}): writing it would destroy it")
    if Path(out).is_dir():
        raise GptlabError(f"{flag} {out} is a directory; name a file")


def check_output_dir(
    out: str | Path,
    inputs: Inputs,
    kind: str | None = None,
    recognise: Callable[[Path], bool] | None = None,
    flag: str = "--out",
) -> None:
    """An output directory: never an input (nor holding or inside one); new, empty, or a directory
    that recognise says is of this kind (kind names it: "a gptlab run"). Without recognise, only a
    new or empty directory is accepted."""
    check_not_input(out, inputs, flag)
    path = Path(out)
    if not path.exists():
        return
    if not path.is_dir():
        raise GptlabError(f"{flag} {out} exists and is not a directory")
    if is_empty_dir(path) or (recognise is not None and recognise(path)):
        return
    what = f"a new or empty directory or {kind}" if recognise is not None else "a new or empty directory"
    raise GptlabError(
        f"{flag} {out} is a non-empty directory that is not {kind or 'one this command made'}: gptlab writes "
        f"only into {what}, so nothing of yours there is overwritten; choose another {flag}"
    )


def check_distinct(outputs: dict[str, str | Path | None]) -> None:
    """Two outputs of one command never share a path (flag -> path; unset ones are ignored)."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if not path:
            continue
        real = _real(path)
        if real in seen:
            raise GptlabError(f"{seen[real]} and {flag} name the same file {path}; give each its own")
        seen[real] = flag


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _stale(entry: Path, prefix: str) -> bool:
    """A staging directory of this kind whose process is gone (a live writer's is left alone)."""
    pid = entry.name[len(prefix) :].partition(".")[0]
    return pid.isdigit() and not (int(pid) == os.getpid() or _alive(int(pid)))


@contextmanager
def staged_directory(out: str | Path, what: str, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory beside out (.NAME.WHAT-PID.XXXX); when the block ends without
    an error it is renamed to out, whole. out must be missing or empty, or, with replace, an existing
    directory the caller has checked may go (it is moved aside, then removed). The staging directories
    of writers of the same kind that were killed (their process is gone) are swept first; the
    staging directory is removed whatever happens."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.{what}-"
    for entry in out.parent.glob(f"{prefix}*"):
        if entry.is_dir() and _stale(entry, prefix):
            shutil.rmtree(entry, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", dir=out.parent))
    plain_mode(staging, directory=True)  # the result gets a plain mkdir's mode, not mkdtemp's 0700
    try:
        yield staging
        aside = None
        if out.exists() and not is_empty_dir(out):
            if not replace:
                raise GptlabError(f"--out {out} was written by another process meanwhile; choose another --out")
            aside = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.old.", dir=out.parent))
            os.replace(out, aside / "old")
        elif out.exists():
            shutil.rmtree(out)  # an empty directory the user made for it (or a refused writer's lock file)
        os.replace(staging, out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
