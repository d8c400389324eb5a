"""Ports a rule names that are not there: the agent's decision of what to say about them, apart from I/O.

A named port missing at start is usually on its way (VF representors are made
after boot, Open vSwitch adds ports when its VMs start), and hwsflow samples it
as soon as it appears: that is INFO.  Only a port still missing after a grace
period is an ERROR, said once, because by then a typo is likelier than a late
port.  Pure: the agent passes the names present and the time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hwsflow.core.model import LogLine

GRACE = 60.0  # s a named port may take to appear before its absence is an error


class MissingPorts:
    """Named ports not present, each with the time it was first found missing."""

    def __init__(self, grace: float = GRACE) -> None:
        self.grace = grace
        self.since: dict[str, float] = {}
        self.reported: set[str] = set()

    def expect(self, names: Iterable[str], present: Iterable[str], now: float) -> list[LogLine]:
        """The config names these ports (at start or reload): one INFO line per port not present yet."""
        here = set(present)
        wanted = [name for name in names if name not in here]
        self.since = {name: self.since.get(name, now) for name in wanted}
        self.reported &= set(wanted)
        return [LogLine(logging.INFO, f"port {name}: no such interface; sampled as soon as it appears")
                for name in wanted if self.since[name] == now]

    def check(self, present: Iterable[str], now: float) -> list[LogLine]:
        """INFO for each awaited port that appeared, ERROR once for each still missing after the grace."""
        here = set(present)
        lines = []
        for name in [name for name in self.since if name in here]:
            del self.since[name]
            if name in self.reported:
                self.reported.discard(name)
                lines.append(LogLine(logging.INFO, f"port {name}: the interface is there now"))
        for name, since in self.since.items():
            if name not in self.reported and now - since >= self.grace:
                self.reported.add(name)
                lines.append(LogLine(logging.ERROR, f"port {name}: still no such interface after "
                                                    f"{self.grace:.0f} s; check the name in the config"))
        return lines
