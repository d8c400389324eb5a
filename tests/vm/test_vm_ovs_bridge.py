"""A `bridge: br0` rule on the real Open vSwitch: hwsflow's filters on br0's veth ports, none on its internal
ports, following ovs-vsctl add-port and del-port, with the workload's external_ids in status and Open
vSwitch's own sFlow warned about once.  The guest side is tests/vm/scenarios_ovs_bridge.py."""

from __future__ import annotations

import json

import pytest

from tests.vm.scenarios_ovs_bridge import BRIDGE, IDS, INTERNAL, SFLOW_OFF, SFLOW_WARNING, TUNNEL


@pytest.fixture(scope="module")
def bridge(vm) -> dict:
    assert "ovs_bridge" in vm, vm["errors"]
    assert not [e for e in vm["errors"] if e.startswith("scenario_ovs_bridge")], vm["errors"]
    return vm["ovs_bridge"]


def test_filters_on_the_bridges_veth_ports_and_never_on_its_internal_ports(bridge):
    # Open vSwitch answers within the start's wait, so the bridge's ports are there at READY=1 (or, when
    # it re-creates a port's qdisc meanwhile, healed right after: settled)
    assert bridge["settled"] == {"obv0": True, "obv1": True, "obv2": False, INTERNAL: False, BRIDGE: False}
    assert not bridge["at_ready"][INTERNAL] and not bridge["at_ready"][BRIDGE]


def test_ports_added_and_deleted_with_ovs_vsctl_are_followed(bridge):
    assert bridge["after_changes"] == {"obv0": True, "obv1": False, "obv2": True, INTERNAL: False, BRIDGE: False}
    print(f"add-port to filter {bridge['add_port_s']:.2f} s, del-port to no filter {bridge['del_port_s']:.2f} s")


def test_status_names_the_workload_behind_the_port(bridge):
    assert bridge["status_json"]["exit"] == 0, bridge["status_json"]
    status = json.loads(bridge["status_json"]["stdout"])
    rows = {row["port"]: row for row in status["ports"]}
    assert set(rows) == {"obv0", "obv2"}
    (obv0,) = rows["obv0"]["ovs"]
    assert (obv0["bridge"], obv0["port"], obv0["type"], obv0["external_ids"]) == (BRIDGE, "obv0", "system", IDS)
    assert rows["obv2"]["ovs"][0]["external_ids"] == {}
    assert status["agent"]["ovsdb"]["state"] == "connected" and BRIDGE in status["agent"]["ovsdb"]["bridges"]
    assert f"obv0: open vswitch bridge {BRIDGE}, port obv0, iface-id={IDS['iface-id']}" in bridge["status_text"]["stdout"]


def test_open_vswitch_sflow_is_one_warning_noted_in_status_and_its_removal_one_info(bridge):
    log = bridge["log"].splitlines()
    assert [line.split()[0] for line in log if SFLOW_WARNING in line] == ["WARNING"]
    assert [line for line in log if SFLOW_OFF in line] == [f"INFO {SFLOW_OFF}"]
    assert f"{SFLOW_WARNING} (to 127.0.0.1:6399, 1-in-64)" in bridge["status_sflow"]["stdout"]


def test_a_tunnel_device_is_sampled_only_when_the_rule_asks_for_tunnels(bridge):
    assert bridge["tunnel_device"] == "vxlan_sys_4789"
    assert bridge["tunnel_without_tunnels"] is False
    assert bridge["status_tunnel"]["exit"] == 0, bridge["status_tunnel"]
    rows = {row["port"]: row for row in json.loads(bridge["status_tunnel"]["stdout"])["ports"]}
    assert [(o["bridge"], o["port"], o["type"]) for o in rows["vxlan_sys_4789"]["ovs"]] == [(BRIDGE, TUNNEL, "vxlan")]
    print(f"reload with tunnels: true to a filter on vxlan_sys_4789: {bridge['tunnel_reload_s']:.2f} s")


def test_a_clean_run_and_a_clean_stop(bridge):
    log = bridge["log"]
    assert "Traceback" not in log
    assert not [line for line in log.splitlines() if line.startswith("ERROR")], log
    assert bridge["exit"] == 0
    assert not any(bridge["after_stop"].values()), bridge["after_stop"]
    assert "vxlan_sys_4789" in bridge["after_stop"]  # checked while Open vSwitch still had it
