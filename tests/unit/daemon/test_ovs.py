"""Following Open vSwitch without a socket: the monitor's events in, the links' bridges and the log out."""

from __future__ import annotations

import asyncio
import logging

from hwsflow.core.config import parse_config
from hwsflow.core.model import LinkInfo, OvsMembership
from hwsflow.daemon.ovs import OvsFollower
from hwsflow.linux.ovsdb import Changed, Lost, Snapshot, Unreachable
from hwsflow.wire.ovsdb_monitor import RowChange

CONFIG = "targets: ['192.0.2.10:6343']\nports:\n  - bridge: br0\n  - bridge: br9\n"
NOWHERE = "ovsdb: /nonexistent/hwsflow-test/db.sock\n"  # whatever runs on the host, the events are the test's


def rows(*ports: str, sflow: bool = False) -> list[RowChange]:
    """br0 with these system ports (interface = port), and an sFlow row when asked."""
    found = [RowChange("Interface", f"i-{p}", {"name": p, "type": "", "options": ["map", []],
                                               "external_ids": ["map", [["iface-id", f"id-{p}"]]]}) for p in ports]
    found += [RowChange("Port", f"p-{p}", {"name": p, "interfaces": ["uuid", f"i-{p}"]}) for p in ports]
    found.append(RowChange("sFlow", "s", {"targets": "192.0.2.9:6343", "sampling": 64}))
    found.append(RowChange("Bridge", "b", {"name": "br0", "ports": ["set", [["uuid", f"p-{p}"] for p in ports]],
                                           "sflow": ["uuid", "s"] if sflow else ["set", []]}))
    return found


def follower() -> tuple[OvsFollower, list[int]]:
    calls: list[int] = []
    ovs = OvsFollower(parse_config(CONFIG + NOWHERE), lambda: calls.append(1))

    async def started() -> None:  # the monitor is started, then closed: the events below are fed by hand
        await ovs.start()
        await ovs.close()

    asyncio.run(started())
    return ovs, calls


def test_snapshot_and_changes_reach_the_links(caplog):
    caplog.set_level(logging.INFO, logger="hwsflow")
    ovs, calls = follower()
    ovs.handle(Snapshot(rows("vm1")))
    assert calls and "following its bridges" in caplog.text
    links = {1: ovs.annotate(LinkInfo("vm1")), 2: ovs.annotate(LinkInfo("vm2"))}
    assert links[1].ovs == (OvsMembership("br0", "system"),) and links[2].ovs == ()
    ovs.handle(Changed(rows("vm2")))  # vm1 left br0, vm2 joined it
    changed, joined = ovs.changed_links(links)
    assert set(changed) == {1, 2} and joined
    assert changed[1].ovs == () and changed[2].ovs == (OvsMembership("br0", "system"),)
    assert ovs.changed_links({1: changed[1], 2: changed[2]}) == ({}, False)
    ovs.handle(Changed(rows()))  # vm2 left too: a change, but nobody joined
    assert ovs.changed_links({2: changed[2]})[1] is False
    assert ovs.port_status("vm1") == [] and ovs.port_status("eth0") == []


def test_what_is_logged_about_bridges_and_sflow(caplog):
    caplog.set_level(logging.INFO, logger="hwsflow")
    ovs, _ = follower()
    ovs.handle(Snapshot(rows("vm1", sflow=True)))
    ovs.check({1: ovs.annotate(LinkInfo("vm1"))}, now=0.0)
    assert "ports[1]: Open vSwitch has no bridge br9" in caplog.text
    assert [r.levelname for r in caplog.records if "runs Open vSwitch's own sFlow" in r.message] == ["WARNING"]
    status = ovs.agent_status()
    assert status is not None and status["missing_bridges"] == ["br9"] and status["bridge_rules"]
    assert ovs.port_status("vm1")[0]["external_ids"] == {"iface-id": "id-vm1"}


def test_nothing_is_said_about_bridges_while_not_connected(caplog):
    caplog.set_level(logging.INFO, logger="hwsflow")
    ovs, _ = follower()
    ovs.handle(Snapshot(rows("vm1")))
    ovs.handle(Lost("closed by the server"))
    caplog.clear()
    ovs.check({}, now=0.0)  # the view is stale: br9's absence is not news
    assert caplog.text == ""
    ovs.handle(Unreachable("Connection refused"))
    assert caplog.text == ""  # within the grace: quiet
    assert ovs.annotate(LinkInfo("vm1")).ovs == (OvsMembership("br0", "system"),)  # as last read


def test_no_database_with_bridge_rules_is_one_warning_naming_them(caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="hwsflow")
    config = parse_config(CONFIG + f"ovsdb: {tmp_path / 'db.sock'}\n")
    ovs = OvsFollower(config, lambda: None)

    async def run() -> None:
        await ovs.start()  # no socket: the first attempt fails at once, the start does not wait
        await ovs.close()

    asyncio.run(run())
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "ports[0] (bridge br0), ports[1] (bridge br9) select no port" in warnings[0]
    assert str(tmp_path / "db.sock") in warnings[0]
    assert ovs.agent_status()["state"] == "unreachable: No such file or directory"  # type: ignore[index]
