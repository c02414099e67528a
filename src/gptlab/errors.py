"""The one exception type for errors a user can cause.

The CLI turns it into a single line on stderr and a non-zero exit, never a traceback.
"""


class GptlabError(Exception):
    """A problem with the user's input (path, corpus, config, run, prompt...), with a readable message."""
