"""hwsflow's model: the concepts every layer shares, each defined once here and imported where used.

Pure and dependency-free (it imports nothing of hwsflow), so wire, core, linux
and daemon can all import it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal, get_args

# The direction of one sample, one tc filter, one psample group.
Direction = Literal["ingress", "egress"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)
# What a port rule or `hwsflow enable` selects: one direction or both.
DirectionChoice = Literal["ingress", "egress", "both"]
DIRECTION_CHOICES: tuple[DirectionChoice, ...] = get_args(DirectionChoice)


def directions_of(choice: DirectionChoice) -> tuple[Direction, ...]:
    """The sample directions a selection covers, ingress first."""
    return DIRECTIONS if choice == "both" else (choice,)


# Where the sample filter runs: the driver decides, in hardware or fail, in software only.
Offload = Literal["auto", "required", "software"]
OFFLOADS: tuple[Offload, ...] = get_args(Offload)

# The largest unsigned 32-bit value, which is also the mask that wraps a counter to sFlow's 32 bits.
U32_MAX = 0xFFFFFFFF

# Bytes of each sampled packet hwsflow exports: one Ethernet header at least, and a bound that keeps
# a sample well inside a datagram.
HEADER_MIN = 14
HEADER_MAX = 1024

# psample group ids: any u32 but 0; hwsflow allocates its own from group_base, one per port and
# direction, and group_base must leave this many above it.
GROUP_MIN = 1
GROUP_MAX = U32_MAX
GROUP_ROOM = 1 << 16

IFNAMSIZ = 16  # the kernel's limit for an interface name, its NUL included
# bytes the kernel's isspace() accepts as white space (lib/ctype.c: 0xA0, Latin-1's no-break space, too)
_KERNEL_SPACE = frozenset(b"\t\n\v\f\r \xa0")

SO_RCVBUFFORCE = 33  # socket.SO_RCVBUFFORCE is missing from Python's socket module; root may exceed rmem_max
DEFAULT_CONTROL_SOCKET = "/run/hwsflow/control.sock"
DEFAULT_OVSDB_SOCKET = "/var/run/openvswitch/db.sock"  # Open vSwitch's database, as Debian's packages put it


def is_ifname(text: str) -> bool:
    """Whether the kernel accepts text as an interface name (net/core/dev.c dev_valid_name), checked on
    its UTF-8 bytes as the kernel sees them; hwsflow also wants it printable, since it shows the name
    in one-line logs, errors and status."""
    # characters first: a lone surrogate (JSON's "\ud800") is not printable, and encode() would raise on it
    if not text.isprintable():
        return False
    raw = text.encode()
    return (0 < len(raw) < IFNAMSIZ and raw not in (b".", b"..")
            and not any(byte in b"/:" or byte in _KERNEL_SPACE for byte in raw))


@dataclass(frozen=True)
class LogLine:
    """A line a pure decision asks the agent to log: the decision is tested, the agent only writes it."""

    level: int  # logging.INFO, logging.ERROR...
    message: str


# What an Open vSwitch interface is, by its type: a port hwsflow may sample ("system": a plain netdev or
# tap), a tunnel's datapath device, the bridge's own "internal" port, a "patch" port (no netdev at all),
# or "other" (a netdev only Open vSwitch's userspace sees: dpdk, vhost-user...)
OvsKind = Literal["system", "tunnel", "internal", "patch", "other"]


@dataclass(frozen=True)
class OvsMembership:
    """A kernel link as a port of an Open vSwitch bridge, read from OVSDB."""

    bridge: str
    kind: OvsKind


@dataclass(frozen=True)
class LinkInfo:
    """What port selection looks at, read from rtnetlink."""

    ifname: str
    # IFLA_PHYS_SWITCH_ID as /sys/class/net/X/phys_switch_id shows it: lowercase hex, no separators
    # (switch_id_text turns the attribute's bytes into it); None when the port is not a switchdev port
    switch_id: str | None = None
    port_name: str | None = None  # IFLA_PHYS_PORT_NAME: "p0" (uplink), "pf0vf3" (VF representor), "pf0"; None if absent
    speed_bps: int = 0  # /sys/class/net/X/speed in bit/s, for `sampling: auto`; 0 when the driver reports none
    # the bridges whose port this link is, from OVSDB: one for a port, maybe several for a tunnel's device
    # (every VXLAN port on UDP 4789 is vxlan_sys_4789); empty when Open vSwitch does not know the link
    ovs: tuple[OvsMembership, ...] = ()


def switch_id_text(raw: bytes) -> str:
    """IFLA_PHYS_SWITCH_ID's bytes in the form LinkInfo.switch_id uses."""
    return raw.hex()


@dataclass(frozen=True)
class PortSelector:
    """Selects links by the selectors it gives (not None), all of which must match."""

    name: str | None  # exact interface name
    match: str | None  # glob over interface names
    switch_id: str | None  # exact phys_switch_id, normalised like LinkInfo.switch_id
    port_name: str | None  # glob over phys_port_name: "pf0vf*" is every VF representor of PF 0
    # the ports of this Open vSwitch bridge; its internal and patch ports never, tunnels only with tunnels
    bridge: str | None = field(default=None, kw_only=True)
    tunnels: bool = field(default=False, kw_only=True)

    def selects(self, link: LinkInfo) -> bool:
        # globs are case-sensitive like interface names, whatever the platform's path rules
        if self.name is not None and link.ifname != self.name:
            return False
        if self.match is not None and not fnmatch.fnmatchcase(link.ifname, self.match):
            return False
        if self.switch_id is not None and link.switch_id != self.switch_id:
            return False
        if self.bridge is not None and not any(self._bridge_selects(member) for member in link.ovs):
            return False
        return self.port_name is None or (link.port_name is not None
                                          and fnmatch.fnmatchcase(link.port_name, self.port_name))

    def _bridge_selects(self, member: OvsMembership) -> bool:
        return member.bridge == self.bridge and (member.kind == "system" or (self.tunnels and member.kind == "tunnel"))
