"""`report_progress`: what a running attempt tells about itself.

Called from `perform`, on the attempt's own thread (or in its worker process), it stores
a short message and/or a fraction on the job, shown by `get_job(...).progress` and
`status()`. Outside a running attempt (a performer unit-tested directly) it does nothing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from queuetopia_py.errors import InvalidJobError

#: Longest progress message stored; longer ones are cut.
MAX_MESSAGE_LENGTH = 1000

Reporter = Callable[[str | None, float | None], bool]

_current = threading.local()


def report_progress(message: str | None = None, fraction: float | None = None) -> bool:
    """Store the running attempt's progress: `message` (short text) and/or `fraction`
    (0.0 to 1.0). Each call is one small write: report every second or so, not per item.

    Returns False when there is nothing to report to: called outside an attempt, or the
    attempt has lost its claim (another node took its queue over).

    >>> report_progress("sent 40 of 100 mails", 0.4)
    True
    """
    if message is None and fraction is None:
        raise InvalidJobError("message", None, "give a message, a fraction or both")
    if message is not None:
        if not isinstance(message, str):
            raise InvalidJobError("message", message, "must be a string")
        if len(message) > MAX_MESSAGE_LENGTH:
            message = message[: MAX_MESSAGE_LENGTH - 3] + "..."
    if fraction is not None:
        if (
            not isinstance(fraction, int | float)
            or isinstance(fraction, bool)
            or not math.isfinite(fraction)
            or not 0.0 <= fraction <= 1.0
        ):
            raise InvalidJobError("fraction", fraction, "must be a number from 0.0 to 1.0")
        fraction = float(fraction)
    reporter: Reporter | None = getattr(_current, "reporter", None)
    if reporter is None:
        return False
    return reporter(message, fraction)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Route this thread's `report_progress` calls to `reporter` while the block runs."""
    previous = getattr(_current, "reporter", None)
    _current.reporter = reporter
    try:
        yield
    finally:
        _current.reporter = previous
