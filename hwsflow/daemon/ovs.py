"""Open vSwitch, as the agent follows it: the OVSDB monitor's events turned into the bridges' current
view, the links annotated with it for port selection, and the log lines and status it is worth.

The agent owns the ports; this only says which links' bridge membership
changed (changed_links) and what to log, from the pure cores
(core.ovs_bridges, core.ovsdb_state, core.ovs_notices).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from hwsflow.core.config import Config
from hwsflow.core.model import LinkInfo
from hwsflow.core.ovs_bridges import COLUMNS, OvsSflow, OvsTables, OvsView
from hwsflow.core.ovs_notices import BridgeNotices
from hwsflow.core.ovsdb_state import OvsdbConnection, OvsdbState
from hwsflow.daemon.logs import say as _say
from hwsflow.linux.ovsdb import Changed, Event, Lost, OvsdbMonitor, Refused, Snapshot, Unreachable

FIRST_CONTACT = 2.0  # s the start waits for the database's first answer, so that bridge ports start with the rest


def rule_names(config: Config) -> tuple[str, ...]:
    return tuple(f"{rule} (bridge {bridge})" for bridge, rule in config.bridge_rules().items())


class OvsFollower:
    """The database at config.ovsdb, followed while the agent runs; on_change is called (on the loop) when the
    bridges may have changed."""

    def __init__(self, config: Config, on_change: Callable[[], None]) -> None:
        self.config = config
        self.on_change = on_change
        self.tables = OvsTables()
        self.view = OvsView()
        self.notices = BridgeNotices()
        self.state: OvsdbConnection | None = None
        self._monitor: OvsdbMonitor | None = None
        self._answered = asyncio.Event()

    async def start(self) -> None:
        """Connect (when config.ovsdb is set) and wait a moment for the first answer, whatever it is."""
        if self.config.ovsdb is None:
            return
        self.state = OvsdbConnection(self.config.ovsdb, rule_names(self.config))
        self._answered.clear()
        self._monitor = OvsdbMonitor(self.config.ovsdb, COLUMNS, self.handle)
        self._monitor.start()
        try:
            await asyncio.wait_for(self._answered.wait(), FIRST_CONTACT)
        except TimeoutError:
            pass

    async def close(self) -> None:
        if self._monitor is not None:
            await self._monitor.close()
            self._monitor = None

    async def reload(self, config: Config) -> None:
        """A new config: another socket means a new connection (and nothing known until it answers)."""
        old, self.config = self.config, config
        if old.ovsdb != config.ovsdb:
            await self.close()
            self.tables, self.view, self.state = OvsTables(), OvsView(), None
            self.on_change()
            await self.start()
        elif self.state is not None:
            self.state.bridge_rules = rule_names(config)

    def handle(self, event: Event) -> None:
        """One event of the monitor (on the loop)."""
        assert self.state is not None
        now = time.monotonic()
        self._answered.set()
        if isinstance(event, Snapshot | Changed):
            if isinstance(event, Snapshot):
                self.tables.replace(event.rows)
            else:
                self.tables.apply(event.rows)
            self.view = self.tables.view()  # a ProtocolError here ends the connection (the monitor says so)
            if isinstance(event, Snapshot):
                _say(self.state.connected())
            self.on_change()
        elif isinstance(event, Unreachable):
            _say(self.state.unreachable(event.reason, now))
        elif isinstance(event, Lost):
            _say(self.state.lost(event.reason, now))
        elif isinstance(event, Refused):
            _say(self.state.refused(event.reason))

    # ------------------------------------------------------------ links

    def annotate(self, link: LinkInfo) -> LinkInfo:
        """The link with the bridges it is a port of, as last read."""
        return replace(link, ovs=self.view.memberships(link.ifname))

    def changed_links(self, links: Mapping[int, LinkInfo]) -> tuple[dict[int, LinkInfo], bool]:
        """The links whose membership the current view changes, annotated anew; and whether one joined a
        bridge (Open vSwitch is setting that port up: give it a moment before adding to it)."""
        changed, joined = {}, False
        for ifindex, link in links.items():
            annotated = self.annotate(link)
            if annotated.ovs != link.ovs:
                changed[ifindex] = annotated
                joined |= bool(set(annotated.ovs) - set(link.ovs))
        return changed, joined

    # ------------------------------------------------------------ what it is worth saying

    def check(self, sampled: Mapping[int, LinkInfo], now: float) -> None:
        """Log what changed about the bridges rules name, and Open vSwitch's sFlow on the bridges of the
        sampled links.  Only while connected: a lost connection's view is stale."""
        if self.state is None or self.state.state is not OvsdbState.CONNECTED:
            return
        for line in self.notices.bridges(self.config.bridge_rules(), self.view.bridges, now):
            _say(line)
        bridges: dict[str, OvsSflow | None] = {}
        for link in sampled.values():
            for member in link.ovs:
                bridge = self.view.bridges.get(member.bridge)
                bridges[member.bridge] = bridge.sflow if bridge is not None else None
        for line in self.notices.sflow(bridges):
            _say(line)

    def agent_status(self) -> dict[str, Any] | None:
        if self.state is None:
            return None
        return {"socket": self.state.socket, "state": self.state.status(), "bridge_rules": bool(self.state.bridge_rules),
                "bridges": sorted(self.view.bridges), "missing_bridges": self.notices.missing()}

    def port_status(self, ifname: str) -> list[dict[str, Any]]:
        """What Open vSwitch says about the interfaces a link carries (empty when it knows none)."""
        return [attachment.describe() for attachment in self.view.attachments(ifname)]
