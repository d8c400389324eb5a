"""Whether hwsflow reaches Open vSwitch's database, and what the log says about it: the agent's decision,
apart from the socket.

Open vSwitch is optional.  Without it (no socket, connection refused) hwsflow
samples what its other rules select; a `bridge:` rule then selects nothing,
which is said once, naming the rules and the socket, and the agent connects as
soon as Open vSwitch runs.  A connection lost (Open vSwitch restarting) is INFO:
hwsflow reconnects by itself, and the ports keep sampling as last read; only
if the database stays away past a grace is that a WARNING, once.  A server
that refuses the monitor request (not Open vSwitch's database) is an ERROR.
Pure: the agent reports what happened and when; states and events in an
explicit transition table, as in core.psample_state.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping

from hwsflow.core.model import LogLine

GRACE = 60.0  # s the database may stay away after a lost connection before that is said again


class OvsdbState(enum.Enum):
    UNKNOWN = "not tried yet"
    ABSENT = "unreachable"  # never reached since the start (or since the socket changed)
    CONNECTED = "connected"
    LOST = "reconnecting"  # was connected: Open vSwitch restarting, usually
    REFUSED = "refused"  # the server answered the monitor request with an error


class OvsdbEvent(enum.Enum):
    UNREACHABLE = "unreachable"  # a connection attempt failed
    CONNECTED = "connected"  # the monitor's first reply arrived
    LOST = "lost"  # an established connection ended
    REFUSED = "refused"


_S, _E = OvsdbState, OvsdbEvent
TRANSITIONS: Mapping[tuple[OvsdbState, OvsdbEvent], OvsdbState] = {
    **{(state, _E.CONNECTED): _S.CONNECTED for state in OvsdbState},
    **{(state, _E.REFUSED): _S.REFUSED for state in OvsdbState},
    (_S.UNKNOWN, _E.UNREACHABLE): _S.ABSENT,
    (_S.ABSENT, _E.UNREACHABLE): _S.ABSENT,
    (_S.CONNECTED, _E.UNREACHABLE): _S.LOST,
    (_S.LOST, _E.UNREACHABLE): _S.LOST,
    (_S.REFUSED, _E.UNREACHABLE): _S.REFUSED,
    (_S.UNKNOWN, _E.LOST): _S.ABSENT,
    (_S.ABSENT, _E.LOST): _S.ABSENT,
    (_S.CONNECTED, _E.LOST): _S.LOST,
    (_S.LOST, _E.LOST): _S.LOST,
    (_S.REFUSED, _E.LOST): _S.REFUSED,
}


class OvsdbConnection:
    """What the agent knows of its OVSDB connection, and the one line each change of it is worth.

    bridge_rules: the rules that need the database, as the log names them ("ports[2] (bridge br0)")."""

    def __init__(self, socket: str, bridge_rules: tuple[str, ...]) -> None:
        self.socket = socket
        self.bridge_rules = bridge_rules
        self.state = OvsdbState.UNKNOWN
        self.reason = ""
        self.lost_at: float | None = None
        self._lost_said = False

    def connected(self) -> LogLine:
        before = self._move(_E.CONNECTED, "")
        self.lost_at = None
        if before is OvsdbState.LOST:
            return LogLine(logging.INFO, f"Open vSwitch database {self.socket}: reconnected")
        if before in (OvsdbState.ABSENT, OvsdbState.REFUSED):
            return LogLine(logging.INFO, f"Open vSwitch database {self.socket}: reachable now; following its bridges")
        return LogLine(logging.INFO, f"Open vSwitch database {self.socket}: following its bridges")

    def unreachable(self, reason: str, now: float) -> LogLine | None:
        """A connection attempt failed (reason: the error, as "No such file or directory")."""
        before = self._move(_E.UNREACHABLE, reason)
        if before is OvsdbState.UNKNOWN:
            return self._absent_line()
        if self.state is OvsdbState.LOST:
            return self._still_lost(now)
        return None

    def lost(self, reason: str, now: float) -> LogLine | None:
        """An established connection ended (Open vSwitch restarting, usually)."""
        before = self._move(_E.LOST, reason)
        if before is OvsdbState.CONNECTED:
            self.lost_at, self._lost_said = now, False
            rules = "; the ports of bridge rules keep sampling as last read" if self.bridge_rules else ""
            return LogLine(logging.INFO, f"Open vSwitch database {self.socket}: connection lost ({reason}); "
                                         f"reconnecting{rules}")
        if before is OvsdbState.UNKNOWN:
            return self._absent_line()
        return self._still_lost(now) if self.state is OvsdbState.LOST else None

    def refused(self, reason: str) -> LogLine | None:
        before = self._move(_E.REFUSED, reason)
        if before is OvsdbState.REFUSED:
            return None
        return LogLine(logging.ERROR, f"Open vSwitch database {self.socket}: the monitor request was refused "
                                      f"({reason}); is this Open vSwitch's database?{self._rules_text('meanwhile')}")

    def status(self) -> str:
        return self.state.value + (f": {self.reason}" if self.reason and self.state is not OvsdbState.CONNECTED else "")

    def _move(self, event: OvsdbEvent, reason: str) -> OvsdbState:
        before, self.state = self.state, TRANSITIONS[self.state, event]
        self.reason = reason
        return before

    def _absent_line(self) -> LogLine:
        if not self.bridge_rules:
            return LogLine(logging.INFO, f"no Open vSwitch database at {self.socket} ({self.reason}); status "
                                         "shows no Open vSwitch names until one appears there")
        return LogLine(logging.WARNING, f"no Open vSwitch database at {self.socket} ({self.reason}):"
                                        f"{self._rules_text('until Open vSwitch runs')}; the other rules are in "
                                        "effect, and hwsflow connects as soon as it does")

    def _still_lost(self, now: float) -> LogLine | None:
        if self._lost_said or not self.bridge_rules or self.lost_at is None or now - self.lost_at < GRACE:
            return None
        self._lost_said = True
        return LogLine(logging.WARNING, f"Open vSwitch database {self.socket}: still unreachable after "
                                        f"{GRACE:.0f} s ({self.reason}); the ports of bridge rules are sampled "
                                        "as last read, and hwsflow keeps trying")

    def _rules_text(self, when: str) -> str:
        if not self.bridge_rules:
            return ""
        verb = "selects" if len(self.bridge_rules) == 1 else "select"
        return f" {', '.join(self.bridge_rules)} {verb} no port {when}"
