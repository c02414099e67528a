"""The one exception type for errors a user can cause, and one line for what the machine refused.

The CLI turns it into a single line on stderr and a non-zero exit, never a traceback.
"""


class GptlabError(Exception):
    """A problem with the user's input (path, corpus, config, run, prompt...), with a readable message."""


def describe_os_error(exc: BaseException) -> str:
    """One line for an error the operating system raised: what it refused and where."""
    if isinstance(exc, MemoryError):
        return "out of memory (try a smaller model, batch_size or block_size)"
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{reason}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
