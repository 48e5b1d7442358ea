"""The exception for invalid options and unusable training input."""


class UserInputError(ValueError):
    """An invalid option or unusable input data, such as a missing path or an empty corpus.

    The command line prints the message as one line on stderr, without a
    traceback, and exits with a non-zero status. The message names the
    option or path and suggests a fix.
    """
