"""The exception for invalid options and unusable training input, and a check that raises it."""

from __future__ import annotations

from collections.abc import Iterable


class UserInputError(ValueError):
    """An invalid option or unusable input data, such as a missing path or an empty corpus.

    The command line prints the message as one line on stderr, without a
    traceback, and exits with a non-zero status. The message names the
    option or path and suggests a fix.
    """


def check_integers(options: object, names: Iterable[str], *, minimum: int) -> None:
    """Raise UserInputError naming the first attribute of `options` in `names` that is not an integer >= `minimum`.

    Booleans are rejected although Python counts them as integers.
    """
    kind = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f"at least {minimum}"
    for name in names:
        value = getattr(options, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserInputError(f"{name} must be a {kind} integer, but got {value!r}")
