"""Open vSwitch's bridges as OVSDB describes them: the rows an OVSDB monitor follows, merged, and what
they say about each kernel link (which bridge's port it is, who is behind it, whether the bridge runs
Open vSwitch's own sFlow).

Pure: the agent feeds the row changes the monitor receives (hwsflow.linux.ovsdb)
and annotates the links it reads from rtnetlink with memberships().  An
Interface's name is its kernel netdev for plain ports, taps and internal ports;
a tunnel port's packets go through one datapath device per tunnel type and UDP
port instead, named as Open vSwitch names it (lib/netdev-vport.c,
netdev_vport_get_dpif_port): vxlan_sys_4789, genev_sys_6081, gre_sys...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hwsflow.core.model import OvsKind, OvsMembership
from hwsflow.wire import ovsdb_monitor as db

# what the monitor follows: the few columns hwsflow reads, never a whole table
COLUMNS: Mapping[str, tuple[str, ...]] = {
    "Bridge": ("name", "ports", "sflow"),
    "Port": ("name", "interfaces"),
    "Interface": ("name", "type", "options", "external_ids"),
    "sFlow": ("targets", "sampling"),
}

# Interface external_ids that name the workload behind a port (set by Nova, OVN, libvirt)
IDENTITY_KEYS = ("iface-id", "attached-mac", "vm-uuid")

# Interface types whose name is a kernel netdev hwsflow can filter ("" is the default, a system port)
SYSTEM_TYPES = frozenset({"", "system", "tap", "afxdp", "afxdp-nonpmd"})
# tunnel type: (datapath device prefix, default UDP port, or None for a device without one)
TUNNEL_DEVICES: Mapping[str, tuple[str, int | None]] = {
    "vxlan": ("vxlan_sys", 4789),
    "geneve": ("genev_sys", 6081),
    "gtpu": ("gtpu_sys", 2152),
    "lisp": ("lisp_sys", 4341),  # removed in Open vSwitch 3.6
    "stt": ("stt_sys", 7471),  # removed in Open vSwitch 3.6
    "bareudp": ("udp_sys", 0),  # no default port: Open vSwitch requires options:dst_port
    "gre": ("gre_sys", None),
    "erspan": ("erspan_sys", None),
    "ip6gre": ("ip6gre_sys", None),
    "ip6erspan": ("ip6erspan_sys", None),
    "srv6": ("srv6_sys", None),
}


def kind_of(interface_type: str) -> OvsKind:
    if interface_type in SYSTEM_TYPES:
        return "system"
    if interface_type in TUNNEL_DEVICES:
        return "tunnel"
    if interface_type in ("internal", "patch"):
        return interface_type  # type: ignore[return-value]  # narrowed by the test above
    return "other"


def tunnel_device(interface_type: str, options: Mapping[str, str]) -> str | None:
    """The datapath device a tunnel port's packets go through, or None when it has none."""
    prefix, default_port = TUNNEL_DEVICES[interface_type]
    if default_port is None:
        return prefix
    given = options.get("dst_port", "")
    port = int(given) if given.isdigit() and 0 < int(given) < 65536 else default_port
    return f"{prefix}_{port}" if port else None


@dataclass(frozen=True)
class OvsInterface:
    name: str
    type: str
    kind: OvsKind
    netdev: str | None  # the kernel link its packets go through; None for a patch port or a userspace one
    external_ids: Mapping[str, str]

    @property
    def identity(self) -> dict[str, str]:
        """The external_ids that name the workload, those present."""
        return {key: self.external_ids[key] for key in IDENTITY_KEYS if key in self.external_ids}


@dataclass(frozen=True)
class OvsSflow:
    """Open vSwitch's own sFlow settings on a bridge."""

    targets: tuple[str, ...]
    sampling: int | None  # 1-in-N; None: Open vSwitch's default (400)


@dataclass(frozen=True)
class OvsPort:
    bridge: str
    name: str
    interfaces: tuple[OvsInterface, ...]


@dataclass(frozen=True)
class OvsBridge:
    name: str
    ports: tuple[OvsPort, ...]
    sflow: OvsSflow | None


@dataclass(frozen=True)
class Attachment:
    """One Open vSwitch interface a kernel link carries: what status shows about it."""

    bridge: OvsBridge
    port: OvsPort
    interface: OvsInterface

    def describe(self) -> dict[str, Any]:
        sflow = self.bridge.sflow
        return {
            "bridge": self.bridge.name, "port": self.port.name, "interface": self.interface.name,
            "type": self.interface.type or "system", "external_ids": self.interface.identity,
            "bridge_sflow": None if sflow is None else {"targets": list(sflow.targets), "sampling": sflow.sampling},
        }


@dataclass(frozen=True)
class OvsView:
    """The bridges, and for each kernel link name the Open vSwitch interfaces it carries."""

    bridges: Mapping[str, OvsBridge] = field(default_factory=dict)
    by_netdev: Mapping[str, tuple[Attachment, ...]] = field(default_factory=dict)

    def memberships(self, ifname: str) -> tuple[OvsMembership, ...]:
        """What port selection needs to know of a link: its bridges and what it is on each, each once."""
        return tuple(dict.fromkeys(OvsMembership(a.bridge.name, a.interface.kind)
                                   for a in self.by_netdev.get(ifname, ())))

    def attachments(self, ifname: str) -> tuple[Attachment, ...]:
        return self.by_netdev.get(ifname, ())

    def sflow_bridges(self) -> dict[str, OvsSflow]:
        return {name: bridge.sflow for name, bridge in self.bridges.items() if bridge.sflow is not None}


class OvsTables:
    """The monitored rows, by table and UUID, kept current by the monitor's reply and updates."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Mapping[str, Any]]] = {table: {} for table in COLUMNS}

    def replace(self, changes: Iterable[db.RowChange]) -> None:
        """The monitor's reply: every row there is (after a reconnect, nothing from before counts)."""
        self.rows = {table: {} for table in COLUMNS}
        self.apply(changes)

    def apply(self, changes: Iterable[db.RowChange]) -> None:
        """An update: "new" rows hold every monitored column, so a changed row is replaced whole."""
        for change in changes:
            table = self.rows.setdefault(change.table, {})
            if change.new is None:
                table.pop(change.uuid, None)
            else:
                table[change.uuid] = {**table.get(change.uuid, {}), **change.new}

    def view(self) -> OvsView:
        """The bridges the rows describe; ProtocolError when a column holds what its schema does not allow.
        A reference to a row not (yet) there is left out, as Open vSwitch's own IDL does."""
        interfaces = {uuid: _interface(row) for uuid, row in self.rows["Interface"].items()}
        sflows = {uuid: OvsSflow(db.strings(row.get("targets", ["set", []])),
                                 db.optional_integer(row.get("sampling", ["set", []])))
                  for uuid, row in self.rows["sFlow"].items()}
        bridges: dict[str, OvsBridge] = {}
        for row in self.rows["Bridge"].values():
            name = db.string(row.get("name", ""))
            ports = tuple(_port(name, self.rows["Port"][uuid], interfaces)
                          for uuid in db.uuids(row.get("ports", ["set", []])) if uuid in self.rows["Port"])
            sflow = next((sflows[uuid] for uuid in db.uuids(row.get("sflow", ["set", []])) if uuid in sflows), None)
            bridges[name] = OvsBridge(name, tuple(sorted(ports, key=lambda port: port.name)), sflow)
        by_netdev: dict[str, list[Attachment]] = {}
        for name in sorted(bridges):
            for port in bridges[name].ports:
                for interface in port.interfaces:
                    if interface.netdev is not None:
                        by_netdev.setdefault(interface.netdev, []).append(Attachment(bridges[name], port, interface))
        return OvsView(bridges, {netdev: tuple(found) for netdev, found in by_netdev.items()})


def _interface(row: Mapping[str, Any]) -> OvsInterface:
    name = db.string(row.get("name", ""))
    interface_type = db.string(row.get("type", ""))
    kind = kind_of(interface_type)
    options = db.string_map(row.get("options", ["map", []]))
    if kind == "tunnel":
        netdev = tunnel_device(interface_type, options)
    else:
        netdev = None if kind in ("patch", "other") else name
    return OvsInterface(name, interface_type, kind, netdev, db.string_map(row.get("external_ids", ["map", []])))


def _port(bridge: str, row: Mapping[str, Any], interfaces: Mapping[str, OvsInterface]) -> OvsPort:
    found = tuple(interfaces[uuid] for uuid in db.uuids(row.get("interfaces", ["set", []])) if uuid in interfaces)
    return OvsPort(bridge, db.string(row.get("name", "")), tuple(sorted(found, key=lambda i: i.name)))
