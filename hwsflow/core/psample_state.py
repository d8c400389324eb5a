"""Whether psample is there, and what the log says about it: the agent's decision, apart from its sockets.

Installing hwsflow's first sample filter loads act_sample, and with it psample
(act_sample depends on it), so at most boots the module is missing when the
agent starts and present a moment later.  Its absence is an ERROR only once
hwsflow's own filters had that chance and psample is still missing; before,
it is INFO.  Pure: the agent reports what it tried and when; the object says
what to log.

States and events follow h11's _state.py: an explicit transition table, no I/O.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping

from hwsflow.core.model import LogLine


class PsampleState(enum.Enum):
    UNKNOWN = "unknown"  # not tried yet
    AWAITING_FILTER = "awaiting filter"  # absent, but no filter of hwsflow's has had the chance to load it
    MISSING = "missing"  # absent although one had: an operator must load it
    JOINED = "joined"  # the socket is joined to psample's group: final


class PsampleEvent(enum.Enum):
    ABSENT = "absent"  # a try found no psample, before hwsflow's filters could load it
    ABSENT_AFTER_FILTERS = "absent after filters"  # a try found none although they could have
    JOINED = "joined"


_S, _E = PsampleState, PsampleEvent
TRANSITIONS: Mapping[tuple[PsampleState, PsampleEvent], PsampleState] = {
    (_S.UNKNOWN, _E.ABSENT): _S.AWAITING_FILTER,
    (_S.UNKNOWN, _E.ABSENT_AFTER_FILTERS): _S.MISSING,
    (_S.UNKNOWN, _E.JOINED): _S.JOINED,
    (_S.AWAITING_FILTER, _E.ABSENT): _S.AWAITING_FILTER,
    (_S.AWAITING_FILTER, _E.ABSENT_AFTER_FILTERS): _S.MISSING,
    (_S.AWAITING_FILTER, _E.JOINED): _S.JOINED,
    (_S.MISSING, _E.ABSENT): _S.MISSING,
    (_S.MISSING, _E.ABSENT_AFTER_FILTERS): _S.MISSING,
    (_S.MISSING, _E.JOINED): _S.JOINED,
}

# s: with only receive-only ports (others' rules load psample, hwsflow's own filters never do), how
# long psample may stay missing before that is an error
RECEIVE_ONLY_GRACE = 30.0


class PsampleAvailability:
    """What the agent knows of psample, and the one line each change of it is worth."""

    def __init__(self, started: float) -> None:
        self.state = PsampleState.UNKNOWN
        self.started = started

    def absent(self, reason: str, now: float, own_filters: bool, receive_only: bool, retry: float) -> LogLine | None:
        """A try found no psample (reason: why, naming `modprobe psample`).  own_filters: hwsflow has a
        sample filter installed, which would have loaded the module; receive_only: it samples ports
        through others' rules only."""
        had_chance = own_filters or (receive_only and now - self.started >= RECEIVE_ONLY_GRACE)
        event = PsampleEvent.ABSENT_AFTER_FILTERS if had_chance else PsampleEvent.ABSENT
        before, self.state = self.state, TRANSITIONS[self.state, event]
        if self.state is before:
            return None
        if self.state is PsampleState.MISSING:
            return LogLine(logging.ERROR, f"{reason}; retrying every {retry:.0f} s")
        return LogLine(logging.INFO, "psample is not loaded yet; the first sample filter hwsflow installs "
                                     "loads it, and the agent joins it then")

    def joined(self) -> LogLine | None:
        before, self.state = self.state, TRANSITIONS[self.state, PsampleEvent.JOINED]
        if before in (PsampleState.AWAITING_FILTER, PsampleState.MISSING):
            return LogLine(logging.INFO, "psample is available now")
        return None
