"""A hang is a failure: bound a block's wall-clock time in the main thread (SIGALRM)."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from collections.abc import Iterator


class TookTooLong(AssertionError):
    """The block ran past its bound: for a parser of untrusted input, a hang."""


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    def expire(_signum: int, _frame: object) -> None:
        raise TookTooLong(f"{what} still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
