"""Open vSwitch's bridges from OVSDB rows, replayed from what Open vSwitch 3.1's ovsdb-server sent for the
commands of tests.helpers.ovsdb_record (SESSION), and what a `bridge:` rule selects of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from hwsflow.core.model import LinkInfo, OvsMembership, PortSelector
from hwsflow.core.ovs_bridges import OvsSflow, OvsTables, OvsView, kind_of, tunnel_device
from hwsflow.wire import ovsdb_jsonrpc as rpc
from hwsflow.wire import ovsdb_monitor as db

SESSION = (Path(__file__).parents[1] / "wire" / "ovsdb_session.jsonrpc").read_bytes()


def views() -> list[OvsView]:
    """The view after the monitor's reply, then after each update."""
    reply, *updates = rpc.MessageStream().feed(SESSION)
    assert isinstance(reply, rpc.Reply)
    tables = OvsTables()
    tables.replace(db.row_changes(reply.result))
    found = [tables.view()]
    for update in updates:
        assert isinstance(update, rpc.Notification)
        rows = db.update_of(update.params, "hwsflow")
        assert rows is not None
        tables.apply(rows)
        found.append(tables.view())
    return found


VIEWS = views()
# what each command of SESSION leaves, by index: VIEWS[0] is the state before them
START, BR1, PATCH, VXLAN, GENEVE, SFLOW, IFACE_STATUS, DEL_INT1, NO_SFLOW, DEL_BR1 = VIEWS


def test_the_state_the_monitor_reply_gives():
    assert list(START.bridges) == ["br0"]
    assert [port.name for port in START.bridges["br0"].ports] == ["br0", "int1", "vm1tap"]
    assert START.memberships("vm1tap") == (OvsMembership("br0", "system"),)
    assert START.memberships("int1") == (OvsMembership("br0", "internal"),)
    assert START.memberships("br0") == (OvsMembership("br0", "internal"),)
    assert START.memberships("eth0") == ()


def test_who_is_behind_a_port():
    (attachment,) = START.attachments("vm1tap")
    assert attachment.describe() == {
        "bridge": "br0", "port": "vm1tap", "interface": "vm1tap", "type": "system",
        "external_ids": {"iface-id": "8c1f0d4e-port", "attached-mac": "52:54:00:12:34:56", "vm-uuid": "5a3e0b7c-vm"},
        "bridge_sflow": None,
    }
    # another external_id changes nothing status shows of the workload
    assert IFACE_STATUS.attachments("vm1tap")[0].interface.identity == attachment.interface.identity
    assert IFACE_STATUS.attachments("vm1tap")[0].interface.external_ids["iface-status"] == "active"


def test_patch_ports_have_no_link():
    assert {port.name for port in PATCH.bridges["br0"].ports} >= {"patch-a"}
    assert PATCH.memberships("patch-a") == () and PATCH.memberships("patch-b") == ()
    assert PATCH.bridges["br1"].ports[-1].interfaces[0].kind == "patch"


def test_tunnel_ports_are_their_datapath_devices():
    assert VXLAN.memberships("vxlan_sys_4789") == (OvsMembership("br0", "tunnel"),)
    assert VXLAN.memberships("vx1") == ()
    assert GENEVE.memberships("genev_sys_6082") == (OvsMembership("br1", "tunnel"),)  # options:dst_port
    assert DEL_BR1.memberships("genev_sys_6082") == ()  # its bridge went


def test_open_vswitch_sflow_on_a_bridge_comes_and_goes():
    assert GENEVE.sflow_bridges() == {}
    assert SFLOW.sflow_bridges() == {"br0": OvsSflow(("192.0.2.9:6343",), 64)}
    assert SFLOW.attachments("vm1tap")[0].describe()["bridge_sflow"] == {"targets": ["192.0.2.9:6343"], "sampling": 64}
    assert NO_SFLOW.sflow_bridges() == {}


def test_ports_and_bridges_deleted():
    assert DEL_INT1.memberships("int1") == ()
    assert list(BR1.bridges) == ["br0", "br1"] and list(DEL_BR1.bridges) == ["br0"]


def test_a_reconnect_replaces_everything_known():
    tables = OvsTables()
    tables.apply([db.RowChange("Bridge", "b", {"name": "old", "ports": ["set", []], "sflow": ["set", []]})])
    tables.replace([db.RowChange("Bridge", "c", {"name": "new", "ports": ["set", []], "sflow": ["set", []]})])
    assert list(tables.view().bridges) == ["new"]


def test_a_reference_to_a_row_not_there_is_left_out():
    tables = OvsTables()
    tables.apply([db.RowChange("Bridge", "b", {"name": "br0", "ports": ["uuid", "nope"], "sflow": ["uuid", "x"]})])
    assert tables.view().bridges["br0"].ports == () and tables.view().bridges["br0"].sflow is None


def test_a_device_shared_by_tunnels_of_two_bridges_is_a_port_of_both():
    rows = [
        db.RowChange("Interface", "i1", {"name": "vxa", "type": "vxlan", "options": ["map", []],
                                         "external_ids": ["map", []]}),
        db.RowChange("Interface", "i2", {"name": "vxb", "type": "vxlan", "options": ["map", [["dst_port", "4789"]]],
                                         "external_ids": ["map", []]}),
        db.RowChange("Port", "p1", {"name": "vxa", "interfaces": ["uuid", "i1"]}),
        db.RowChange("Port", "p2", {"name": "vxb", "interfaces": ["uuid", "i2"]}),
        db.RowChange("Bridge", "b1", {"name": "br-a", "ports": ["uuid", "p1"], "sflow": ["set", []]}),
        db.RowChange("Bridge", "b2", {"name": "br-b", "ports": ["uuid", "p2"], "sflow": ["set", []]}),
    ]
    tables = OvsTables()
    tables.replace(rows)
    assert tables.view().memberships("vxlan_sys_4789") == (OvsMembership("br-a", "tunnel"), OvsMembership("br-b", "tunnel"))


def test_a_column_of_the_wrong_type_is_a_protocol_error():
    tables = OvsTables()
    tables.apply([db.RowChange("Bridge", "b", {"name": 5, "ports": ["set", []], "sflow": ["set", []]})])
    with pytest.raises(rpc.ProtocolError):
        tables.view()


@pytest.mark.parametrize("kind,options,device", [
    ("vxlan", {}, "vxlan_sys_4789"), ("vxlan", {"dst_port": "8472"}, "vxlan_sys_8472"),
    ("vxlan", {"dst_port": "flow"}, "vxlan_sys_4789"), ("vxlan", {"dst_port": "70000"}, "vxlan_sys_4789"),
    ("geneve", {}, "genev_sys_6081"), ("gtpu", {}, "gtpu_sys_2152"), ("stt", {}, "stt_sys_7471"),
    ("gre", {"dst_port": "1"}, "gre_sys"), ("erspan", {}, "erspan_sys"), ("ip6gre", {}, "ip6gre_sys"),
    ("bareudp", {}, None), ("bareudp", {"dst_port": "6635"}, "udp_sys_6635"),
])
def test_tunnel_device_names_as_open_vswitch_gives_them(kind, options, device):
    assert tunnel_device(kind, options) == device


@pytest.mark.parametrize("interface_type,kind", [
    ("", "system"), ("system", "system"), ("tap", "system"), ("internal", "internal"), ("patch", "patch"),
    ("vxlan", "tunnel"), ("dpdk", "other"), ("dpdkvhostuserclient", "other"),
])
def test_kinds(interface_type, kind):
    assert kind_of(interface_type) == kind


def linked(ifname: str, view: OvsView) -> LinkInfo:
    return LinkInfo(ifname, ovs=view.memberships(ifname))


def test_a_bridge_rule_selects_its_system_ports_only():
    rule = PortSelector(None, None, None, None, bridge="br0")
    assert rule.selects(linked("vm1tap", START))
    assert not rule.selects(linked("int1", START)) and not rule.selects(linked("br0", START))
    assert not rule.selects(linked("vxlan_sys_4789", VXLAN))  # tunnels only when asked
    assert PortSelector(None, None, None, None, bridge="br0", tunnels=True).selects(linked("vxlan_sys_4789", VXLAN))
    assert not PortSelector(None, None, None, None, bridge="br1").selects(linked("vm1tap", START))
    assert not rule.selects(LinkInfo("vm1tap"))  # Open vSwitch does not know it (not connected, or not a port)


def test_a_bridge_rule_with_other_selectors_needs_them_all():
    assert PortSelector(None, "vm*", None, None, bridge="br0").selects(linked("vm1tap", START))
    assert not PortSelector(None, "tap*", None, None, bridge="br0").selects(linked("vm1tap", START))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8) |
                    st.sampled_from(["set", "map", "uuid", "u1", "p1", "i1", "s1", "vxlan", "internal", "dst_port"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=10)
COLUMNS = ("name", "ports", "sflow", "interfaces", "type", "options", "external_ids", "targets", "sampling")
COLUMN_VALUES = st.fixed_dictionaries({}, optional=dict.fromkeys(COLUMNS, JSON))


@given(st.lists(st.tuples(st.sampled_from(["Bridge", "Port", "Interface", "sFlow"]),
                          st.sampled_from(["u1", "p1", "i1", "s1"]), COLUMN_VALUES), max_size=6))
def test_rows_of_any_shape_give_a_view_or_a_protocol_error(rows):
    tables = OvsTables()
    tables.apply([db.RowChange(table, uuid, new) for table, uuid, new in rows])
    try:
        view = tables.view()
    except rpc.ProtocolError:
        return
    for attachments in view.by_netdev.values():
        assert all(a.describe()["bridge"] in view.bridges for a in attachments)
