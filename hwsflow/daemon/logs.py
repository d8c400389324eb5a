"""Rate limiting for warnings that repeat (a port not offloaded, a collector unreachable), and the
writing of the lines pure decisions ask for.

A condition that persists would otherwise write the same line to the journal on
every attempt; the limiter lets one line per key through each interval and
says, in the next one, how many it held back.  Pure: the clock is injected.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from hwsflow.core.model import LogLine

log = logging.getLogger("hwsflow")


def say(line: LogLine | None) -> None:
    """Log what a pure decision (core.heal, core.psample_state, core.ovsdb_state...) said is worth logging."""
    if line is not None:
        log.log(line.level, "%s", line.message)


@dataclass
class _Window:
    logged_at: float
    suppressed: int = 0


class RateLimiter:
    """At most one message per key every `interval` seconds.

    Keys are port names or collector addresses; ports come and go, so at most
    `max_keys` are remembered and the one logged longest ago is forgotten first
    (its next message is then simply logged).
    """

    def __init__(self, interval: float = 60.0, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval < 0 or max_keys < 1:
            raise ValueError(f"RateLimiter: interval must be >= 0 and max_keys >= 1, got {interval}, {max_keys}")
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()  # oldest logged first

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """(log now?, messages suppressed for key since the last one logged)."""
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.logged_at < self.interval:
            window.suppressed += 1
            return False, 0
        suppressed = window.suppressed if window is not None else 0
        self._windows[key] = _Window(now)
        self._windows.move_to_end(key)
        if len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        return True, suppressed

    def warn(self, logger: logging.Logger, key: Hashable, msg: str, *args: object,
             level: int = logging.WARNING) -> bool:
        """Log msg % args at level unless key was logged within the interval; True when logged."""
        allowed, suppressed = self.allow(key)
        if allowed:
            if suppressed:
                logger.log(level, msg + " (%d similar suppressed)", *args, suppressed)  # noqa: G003 - msg is the caller's format
            else:
                logger.log(level, msg, *args)
        return allowed
