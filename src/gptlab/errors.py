"""The one exception type for errors a user can cause, and one line for what the machine refused.

The CLI turns it into a single line on stderr and a non-zero exit, never a traceback.
"""


class GptlabError(Exception):
    """A problem with the user's input (path, corpus, config, run, prompt...), with a readable message."""


class ContextTooLong(GptlabError):
    """A prompt that does not fit in the model's context (the server's `context_length_exceeded`)."""


TRAINING_MEMORY_HINT = "try a smaller model, batch_size or block_size"


def describe_os_error(exc: BaseException, training: bool = False) -> str:
    """One line for an error the operating system raised: what it refused and where. Running out of
    memory comes with advice on the model's size only where a model is being trained (training)."""
    if isinstance(exc, MemoryError):
        return f"out of memory ({TRAINING_MEMORY_HINT})" if training else "out of memory"
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{reason}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
