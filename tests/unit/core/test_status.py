"""Status figures: per-port sample rates from 1 s readings, and the table the CLI prints."""

from __future__ import annotations

from hwsflow.core.status import NOT_IN_HW_NOTE, RateMeter, render


def test_rate_meter_averages_over_its_window_and_remembers_the_last_sample():
    meter = RateMeter(window=2)
    for second, count in enumerate([0, 10, 30, 30, 30]):
        meter.update(float(second), {7: count})
    assert meter.rate(7) == 0.0  # the last two seconds saw nothing
    assert meter.age(7, 4.0) == 2.0  # the count last moved at t=2
    meter.update(5.0, {})  # the port went away
    assert meter.rate(7) == 0.0 and meter.age(7, 5.0) is None


def _status(**port) -> dict:
    row = {"port": "eno1", "ifindex": 2, "groups": [1000], "rate": 10, "direction": "ingress", "offload": "in_hw",
           "samples_per_s": 12.5, "samples": 99, "drops": 3, "pool": 990, "last_sample_age_s": 0.5,
           "runtime": False, "error": None} | port
    return {
        "agent": {"version": "0", "pid": 1, "uptime_s": 65.0, "address": "192.0.2.1", "config": "/etc/x.yaml",
                  "psample": "joined", "enobufs": 4, "kernel_drops": 17, "samples": 99, "foreign": 0,
                  "malformed": 0, "sample_path": "python (HWSFLOW_PURE_PYTHON is set)"},
        "ports": [row], "disabled": ["eth9"],
        "collectors": [{"target": "192.0.2.10:6343", "sent": 5, "errors": 1, "last_error": "ECONNREFUSED"}],
    }


def test_render_shows_every_figure_and_explains_not_in_hw_and_runtime_changes():
    text = render(_status(offload="not_in_hw", runtime=True))
    header, row = [line.split() for line in text.splitlines()[3:5]]
    assert header == ["PORT", "IFINDEX", "GROUP", "RATE", "IN-FORCE", "DIRECTION", "OFFLOAD", "SAMPLES/S", "DROPS",
                      "POOL", "LAST", "FROM"]
    assert row == ["eno1", "2", "1000", "1-in-10", "1-in-10", "ingress", "not_in_hw", "12.5", "3", "990", "<1s", "runtime"]
    assert "4 ENOBUFS, 17 messages dropped by the kernel" in text
    assert "sample path: python (HWSFLOW_PURE_PYTHON is set)" in text.splitlines()[0]
    assert NOT_IN_HW_NOTE in text and "disabled at runtime (until reload or restart): eth9" in text
    assert "192.0.2.10:6343  5     1       ECONNREFUSED" in text
    assert NOT_IN_HW_NOTE not in render(_status())


def test_render_names_reloads_and_the_metrics_endpoint_only_when_there_are_some():
    status = _status()
    assert "reloads" not in render(status) and "metrics" not in render(status)
    status["agent"].update(reloads={"applied": 2, "rejected": 1}, metrics="[::1]:9465")
    text = render(status)
    assert "reloads: 2 applied, 1 rejected" in text and "metrics: http://[::1]:9465/metrics" in text


def test_render_names_internal_errors_only_when_there_are_some():
    status = _status()
    assert "internal errors" not in render(status)
    status["agent"]["internal_errors"] = 2
    assert "internal errors: 2 psample batches dropped" in render(status)


OVS_PORT = {"bridge": "br0", "port": "vm1tap", "interface": "vm1tap", "type": "system",
            "external_ids": {"iface-id": "8c1f0d4e-port", "attached-mac": "52:54:00:12:34:56", "vm-uuid": "5a3e0b7c-vm"},
            "bridge_sflow": None}


def test_render_says_who_is_behind_a_port_open_vswitch_knows():
    text = render(_status(port="vm1tap", ovs=[OVS_PORT]))
    assert ("  vm1tap: open vswitch bridge br0, port vm1tap, iface-id=8c1f0d4e-port, attached-mac=52:54:00:12:34:56, "
            "vm-uuid=5a3e0b7c-vm") in text.splitlines()
    assert "open vswitch" not in render(_status())  # a port Open vSwitch does not know, with no database


def test_render_names_a_tunnel_device_by_its_open_vswitch_ports():
    tunnel = OVS_PORT | {"port": "vx1", "interface": "vx1", "type": "vxlan", "external_ids": {}}
    text = render(_status(port="vxlan_sys_4789", ovs=[tunnel, tunnel | {"bridge": "br1", "port": "vx2",
                                                                       "interface": "vx2"}]))
    assert "  vxlan_sys_4789: open vswitch bridge br0, port vx1 (vxlan)" in text.splitlines()
    assert "  vxlan_sys_4789: open vswitch bridge br1, port vx2 (vxlan)" in text.splitlines()


def test_render_notes_open_vswitch_sflow_on_the_ports_of_its_bridge():
    sflow = OVS_PORT | {"bridge_sflow": {"targets": ["192.0.2.9:6343"], "sampling": 64}}
    text = render(_status(port="vm1tap", ovs=[sflow]))
    assert ("  vm1tap: bridge br0 runs Open vSwitch's own sFlow (to 192.0.2.9:6343, 1-in-64) as well: the collectors "
            "get two exports of the same traffic") in text


def test_render_shows_the_database_connection_and_missing_bridges():
    status = _status()
    status["agent"]["ovsdb"] = {"socket": "/var/run/openvswitch/db.sock", "state": "unreachable: Connection refused",
                                "bridge_rules": False, "bridges": [], "missing_bridges": []}
    assert "open vswitch" not in render(status)  # a host without Open vSwitch, and no rule needs it
    status["agent"]["ovsdb"]["bridge_rules"] = True
    assert "open vswitch: unreachable: Connection refused (/var/run/openvswitch/db.sock)" in render(status)
    status["agent"]["ovsdb"].update(state="connected", bridges=["br0"], missing_bridges=["br9"])
    assert ("open vswitch: connected (/var/run/openvswitch/db.sock); no bridge br9 (followed: sampled once created)"
            in render(status))
