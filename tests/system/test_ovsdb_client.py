"""hwsflow's OVSDB client against a real ovsdb-server (Open vSwitch 3.1, Debian's), driven by ovs-vsctl.

No kernel module or ovs-vswitchd is involved: the database alone says which
ports a bridge has, and that is what `bridge:` rules read.  The monitor
(hwsflow.linux.ovsdb) feeds the merge (core.ovs_bridges), the selection picks
ports from the annotated links (core.selection), and the connection's life
(absent, appearing, restarting) is checked as the agent sees it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from hwsflow.core.config import parse_config
from hwsflow.core.model import LinkInfo
from hwsflow.core.ovs_bridges import COLUMNS, OvsTables, OvsView
from hwsflow.core.selection import plan_all
from hwsflow.linux import ovsdb
from tests.helpers.ovsdb_server import OvsdbServer

DEADLINE = 30.0  # s: generous, the machine is shared


class Follower:
    """What the agent does with the monitor's events, kept for the test to look at."""

    def __init__(self, path: Path) -> None:
        self.tables = OvsTables()
        self.view = OvsView()
        self.events: list[ovsdb.Event] = []
        self.monitor = ovsdb.OvsdbMonitor(str(path), COLUMNS, self.on_event)

    def on_event(self, event: ovsdb.Event) -> None:
        self.events.append(event)
        if isinstance(event, ovsdb.Snapshot):
            self.tables.replace(event.rows)
        elif isinstance(event, ovsdb.Changed):
            self.tables.apply(event.rows)
        else:
            return
        self.view = self.tables.view()

    def kinds(self) -> list[str]:
        return [type(event).__name__ for event in self.events]


async def until(condition: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > DEADLINE:
            raise AssertionError(f"no {what} within {DEADLINE} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def follow(server: OvsdbServer, scenario: Callable[[Follower], Awaitable[None]],
           follower: Follower | None = None) -> None:
    """Run the scenario with a monitor on the server's socket; the monitor and the server stop after it."""
    async def followed() -> None:
        nonlocal follower
        follower = follower or Follower(server.socket)
        follower.monitor.start()
        try:
            await scenario(follower)
        finally:
            await follower.monitor.close()

    try:
        asyncio.run(followed())
    finally:
        server.stop()


LINKS = {1: "vm1", 2: "vm2", 3: "int1", 4: "vxlan_sys_4789", 5: "br0", 6: "eth0", 7: "gre_sys"}
CONFIG = """
targets: ["192.0.2.10:6343"]
ports:
  - bridge: br0
  - bridge: br1
    tunnels: true
    sampling: 4000
  - name: eth0
"""


def selected(view: OvsView) -> dict[str, int]:
    """What the config selects of LINKS annotated with the view: port -> rate."""
    links = {i: LinkInfo(name, ovs=view.memberships(name)) for i, name in LINKS.items()}
    return {plan.ifname: plan.settings.sampling for plan in plan_all(parse_config(CONFIG), links, {}).values()}


def test_bridge_ports_followed_as_ovs_vsctl_changes_them(tmp_path):
    server = OvsdbServer(tmp_path).start()
    vsctl = server.vsctl
    vsctl("add-br", "br0")
    vsctl("add-port", "br0", "vm1", "--", "set", "interface", "vm1", "external_ids:iface-id=port-1",
          "external_ids:attached-mac=52:54:00:00:00:01", "external_ids:vm-uuid=vm-1", "external_ids:other=x")

    async def scenario(follower: Follower) -> None:
        await until(lambda: "Snapshot" in follower.kinds(), "monitor reply")
        assert selected(follower.view) == {"vm1": 400, "eth0": 400}
        assert follower.view.attachments("vm1")[0].interface.identity == {
            "iface-id": "port-1", "attached-mac": "52:54:00:00:00:01", "vm-uuid": "vm-1"}

        await asyncio.to_thread(vsctl, "add-port", "br0", "vm2", "--", "add-port", "br0", "int1", "--", "set",
                                "interface", "int1", "type=internal")
        await until(lambda: "vm2" in selected(follower.view), "vm2 selected")
        assert "int1" not in selected(follower.view) and "br0" not in selected(follower.view)

        # a tunnel on br0 is not selected (no tunnels: true); one on br1 is, at br1's rule's rate
        await asyncio.to_thread(vsctl, "add-port", "br0", "vx0", "--", "set", "interface", "vx0", "type=vxlan",
                                "options:remote_ip=192.0.2.1")
        await until(lambda: follower.view.memberships("vxlan_sys_4789") != (), "the VXLAN port")
        assert "vxlan_sys_4789" not in selected(follower.view)
        await asyncio.to_thread(vsctl, "add-br", "br1", "--", "add-port", "br1", "gre0", "--", "set",
                                "interface", "gre0", "type=gre", "options:remote_ip=192.0.2.2",
                                "--", "add-port", "br1", "patch-1", "--", "set", "interface", "patch-1",
                                "type=patch", "options:peer=patch-0")
        await until(lambda: "gre_sys" in selected(follower.view), "gre_sys selected")
        assert selected(follower.view)["gre_sys"] == 4000

        await asyncio.to_thread(vsctl, "--", "--id=@s", "create", "sflow", "agent=lo",
                                'targets="192.0.2.9:6343"', "sampling=64", "--", "set", "bridge", "br0", "sflow=@s")
        await until(lambda: "br0" in follower.view.sflow_bridges(), "sFlow on br0")
        assert follower.view.attachments("vm1")[0].describe()["bridge_sflow"] == {
            "targets": ["192.0.2.9:6343"], "sampling": 64}
        await asyncio.to_thread(vsctl, "clear", "bridge", "br0", "sflow")
        await until(lambda: not follower.view.sflow_bridges(), "sFlow off")

        await asyncio.to_thread(vsctl, "del-port", "br0", "vm1")
        await until(lambda: "vm1" not in selected(follower.view), "vm1 gone")
        await asyncio.to_thread(vsctl, "del-br", "br1")
        await until(lambda: "gre_sys" not in selected(follower.view), "br1 gone")
        assert selected(follower.view) == {"vm2": 400, "eth0": 400}
        assert follower.kinds().count("Snapshot") == 1 and "Lost" not in follower.kinds()

    follow(server, scenario)


def test_no_server_then_a_server_then_a_restart(tmp_path):
    server = OvsdbServer(tmp_path)

    async def scenario(follower: Follower) -> None:
        await until(lambda: "Unreachable" in follower.kinds(), "failed attempt")
        first = follower.events[0]
        assert isinstance(first, ovsdb.Unreachable) and first.reason == "No such file or directory"
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.vsctl, "add-br", "br0", "--", "add-port", "br0", "vm1")
        await until(lambda: "vm1" in selected(follower.view), "vm1 once the server runs")
        # a restart: the connection ends, the view stays as last read until the new reply replaces it
        await asyncio.to_thread(server.stop)
        await until(lambda: "Lost" in follower.kinds(), "lost connection")
        assert "vm1" in selected(follower.view)
        await asyncio.to_thread(server.start)  # the same database file
        await asyncio.to_thread(server.vsctl, "add-port", "br0", "vm2")
        took = await until(lambda: "vm2" in selected(follower.view), "vm2 after the restart")
        assert took < DEADLINE
        assert follower.kinds().count("Snapshot") >= 2 and "vm1" in selected(follower.view)

    follow(server, scenario)


def test_a_server_that_is_not_open_vswitch_refuses_the_monitor(tmp_path):
    """An ovsdb-server of another database (OVN's, say) answers with an error: Refused."""
    schema = tmp_path / "other.ovsschema"
    schema.write_text('{"name": "Other", "version": "1.0.0", "tables": {"T": {"columns": {"a": {"type": "string"}}}}}')
    server = OvsdbServer(tmp_path, schema).start()

    async def scenario(follower: Follower) -> None:
        await until(lambda: "Refused" in follower.kinds(), "refusal")
        refused = next(e for e in follower.events if isinstance(e, ovsdb.Refused))
        assert "unknown database" in refused.reason
        assert "Snapshot" not in follower.kinds()

    follow(server, scenario)


def test_a_bug_in_what_follows_costs_the_connection_not_the_monitor(tmp_path, caplog):
    server = OvsdbServer(tmp_path).start()

    class Failing(Follower):
        def on_event(self, event: ovsdb.Event) -> None:
            super().on_event(event)
            if self.kinds().count("Snapshot") == 1 and isinstance(event, ovsdb.Snapshot):
                raise KeyError("planted")

    async def scenario(follower: Follower) -> None:
        await until(lambda: follower.kinds().count("Snapshot") == 2, "a second monitor reply")
        assert follower.kinds()[:2] == ["Snapshot", "Lost"]

    follow(server, scenario, Failing(server.socket))
    assert "internal error while following it (KeyError: 'planted'); reconnecting" in caplog.text
