"""What hwsflow says about the Open vSwitch bridges it reads: a bridge a rule names that does not exist,
and Open vSwitch's own sFlow on a bridge whose ports hwsflow samples.

A missing bridge is followed: its ports are sampled once it is created (OVN
creates br-int when it starts), so it is INFO, and an ERROR once only if it is
still missing after a grace, as for a missing port (core.missing_ports).
Open vSwitch's own sFlow on a sampled bridge is a configuration to change: the
collectors get two exports of the same traffic, and every datapath flow with
its sample action stays out of tc (upstream Open vSwitch offloads no sample
action), so hwsflow warns, once per bridge while it lasts, and says when it is
gone.  Pure: the agent passes the bridges and the time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from hwsflow.core.missing_ports import GRACE
from hwsflow.core.model import LogLine
from hwsflow.core.ovs_bridges import OvsSflow


def sflow_text(sflow: OvsSflow) -> str:
    rate = f"1-in-{sflow.sampling}" if sflow.sampling is not None else "Open vSwitch's default rate"
    return f"to {', '.join(sflow.targets) or 'no target'}, {rate}"


def sflow_note(bridge: str, sflow: OvsSflow) -> str:
    """The consequence, in words, for status and the log."""
    return (f"bridge {bridge} runs Open vSwitch's own sFlow ({sflow_text(sflow)}) as well: the collectors get "
            "two exports of the same traffic, and datapath flows with its sample action are not offloaded to tc; "
            f"turn it off with `ovs-vsctl clear bridge {bridge} sflow`")


class BridgeNotices:
    """Missing bridges (each with when it was first found missing) and the bridges warned about for sFlow."""

    def __init__(self, grace: float = GRACE) -> None:
        self.grace = grace
        self.missing_since: dict[str, float] = {}
        self.reported: set[str] = set()
        self.warned_sflow: set[str] = set()

    def bridges(self, wanted: Mapping[str, str], present: Iterable[str], now: float) -> list[LogLine]:
        """wanted: each bridge the rules name, with the rule that names it ("ports[2]"); present: the bridges
        OVSDB has.  Called whenever they may have changed (a view, a reload, once a second)."""
        here = set(present)
        lines = []
        for bridge in [b for b in self.missing_since if b in here or b not in wanted]:
            del self.missing_since[bridge]
            if bridge in self.reported:
                self.reported.discard(bridge)
                if bridge in here:
                    lines.append(LogLine(logging.INFO, f"bridge {bridge}: created in Open vSwitch; its ports are "
                                                       "sampled now"))
        for bridge, rule in wanted.items():
            if bridge in here:
                continue
            if bridge not in self.missing_since:
                self.missing_since[bridge] = now
                lines.append(LogLine(logging.INFO, f"{rule}: Open vSwitch has no bridge {bridge}; its ports are "
                                                   "sampled as soon as it is created"))
            elif bridge not in self.reported and now - self.missing_since[bridge] >= self.grace:
                self.reported.add(bridge)
                lines.append(LogLine(logging.ERROR, f"{rule}: still no bridge {bridge} in Open vSwitch after "
                                                    f"{self.grace:.0f} s; check the name (`ovs-vsctl list-br`)"))
        return lines

    def missing(self) -> list[str]:
        return sorted(self.missing_since)

    def sflow(self, sampled: Mapping[str, OvsSflow | None]) -> list[LogLine]:
        """sampled: each bridge hwsflow samples ports of, with Open vSwitch's sFlow on it (None: off)."""
        lines = []
        for bridge, sflow in sorted(sampled.items()):
            if sflow is not None and bridge not in self.warned_sflow:
                self.warned_sflow.add(bridge)
                lines.append(LogLine(logging.WARNING, sflow_note(bridge, sflow)))
            elif sflow is None and bridge in self.warned_sflow:
                self.warned_sflow.discard(bridge)
                lines.append(LogLine(logging.INFO, f"bridge {bridge}: Open vSwitch's own sFlow is off now"))
        self.warned_sflow &= set(sampled)  # a bridge no longer sampled: warned again should it come back
        return lines
