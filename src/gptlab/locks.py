"""Advisory locks on directories (fcntl.flock on DIR/.gptlab.lock), so two processes never write
one run or one dataset at the same time.

A trainer holds its run directory exclusively and its dataset shared; prepare holds its output
directory exclusively. So a second trainer on the same --out, or a prepare over a dataset a run is
reading, is refused at once with one line. The kernel drops a lock when its process dies, however
it dies, so a crash never leaves a stale lock; the empty lock file stays (removing it would race
with a process about to lock it).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from gptlab.errors import GptlabError

LOCK_FILE = ".gptlab.lock"


class DirLock:
    """A held lock on a directory; release() (or process exit) lets it go."""

    def __init__(self, fd: int | None):
        self._fd = fd

    def release(self) -> None:
        """Unlock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_dir(directory: str | Path, busy: str, shared: bool = False) -> DirLock:
    """Lock directory (which must exist), without waiting: exclusive, or shared with other shared
    holders. busy is the error raised, as one line, when another process holds a conflicting lock.

    A shared lock on a directory this user cannot write to (a read-only dataset) is skipped: the
    reader then relies on the dataset id check alone (data/loader.py)."""
    path = Path(directory) / LOCK_FILE
    if not shared and not os.access(directory, os.W_OK):  # the holder will write there: say so now
        raise GptlabError(f"cannot write to {directory}: permission denied")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if shared and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return DirLock(None)
        raise GptlabError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise GptlabError(busy) from None
    except OSError as exc:  # a filesystem without locks (some network mounts): go on unlocked
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            os.close(fd)
            raise
    return DirLock(fd)


def lock_run(run: str | Path, create: bool) -> DirLock:
    """The exclusive lock a trainer holds on its run directory (created first when create; a missing
    directory is not locked when not create: the caller then reports that it is no run)."""
    run = Path(run)
    if not run.is_dir():
        if not create or run.exists():
            return DirLock(None)
        try:
            run.mkdir(parents=True)
        except OSError as exc:
            raise GptlabError(f"cannot create {run}: {exc.strerror or exc}") from None
    return lock_dir(
        run, f"{run} is in use by another gptlab process (training it); wait for it to finish or choose another --out"
    )


def lock_dataset_for_reading(data: str | Path) -> DirLock:
    """The shared lock a trainer holds on its dataset, so prepare cannot replace it underneath."""
    if not Path(data).is_dir():
        return DirLock(None)
    return lock_dir(
        data, f"the dataset {data} is being written by `gptlab prepare` right now; wait for it to finish", shared=True
    )


def lock_dataset_for_writing(out: str | Path) -> DirLock:
    """The exclusive lock prepare holds on its output directory."""
    return lock_dir(
        out,
        f"{out} is in use by another gptlab process (a training run reading it, or "
        "another prepare); wait for it to finish or choose another --out",
    )
