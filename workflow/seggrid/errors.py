"""One exception type for every problem a user can fix (bad config, dataset, file)."""


class SeggridError(Exception):
    """A user-facing error: the CLI prints it without a traceback and exits non-zero.

    The message must name the file (or config key) and the problem.
    """
