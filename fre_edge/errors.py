"""Errors a user can act on: one line that names the problem and the fix.

The CLI turns a :class:`FreEdgeError` into ``Error: <message>`` on stderr and exit status 2.
"""


class FreEdgeError(Exception):
    """A bad input or a missing resource; the message says what is wrong and how to fix it."""


class NotFittedError(FreEdgeError, AttributeError):
    """A method that needs a fitted model was called before ``fit``."""
