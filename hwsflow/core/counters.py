"""Counter samples: a port's link state and 64-bit kernel stats mapped onto sFlow counter records.

Pure: the agent reads the stats (rtnetlink IFLA_STATS64, /sys for speed and
duplex) and hands them in; this module decides what each sFlow field means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hwsflow.wire.sflow import encode_ethernet_counters, encode_if_counters, encode_port_name

UNKNOWN = 0xFFFFFFFF  # sFlow's "counter not available"
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
IFTYPE_OTHER, IFTYPE_ETHERNET, IFTYPE_LOOPBACK = 1, 6, 24  # IANA ifType
_DUPLEX = {"full": 1, "half": 2}  # sFlow ifDirection; 0 = unknown


@dataclass(frozen=True)
class LinkState:
    """What the kernel says about one port at polling time."""

    ifindex: int
    ifname: str
    arphrd: int  # ifi_type
    admin_up: bool
    oper_up: bool
    promisc: bool
    speed_bps: int = 0  # 0 = unknown
    duplex: str = "unknown"
    stats: dict[str, int] = field(default_factory=dict)  # IFLA_STATS64 field names


def iftype(arphrd: int) -> int:
    return {ARPHRD_ETHER: IFTYPE_ETHERNET, ARPHRD_LOOPBACK: IFTYPE_LOOPBACK}.get(arphrd, IFTYPE_OTHER)


def if_counters(link: LinkState) -> bytes:
    """Generic interface counters (0:1).  Linux counts no broadcasts and no outgoing multicasts: unknown."""
    s = link.stats.get
    rx_packets, multicast = s("rx_packets", 0), s("multicast", 0)
    return encode_if_counters(
        ifindex=link.ifindex,
        iftype=iftype(link.arphrd),
        speed=link.speed_bps,
        direction=_DUPLEX.get(link.duplex, 0),
        status=int(link.admin_up) | int(link.oper_up) << 1,
        in_octets=s("rx_bytes", 0),
        in_ucast=max(0, rx_packets - multicast),
        in_mcast=multicast,
        in_bcast=UNKNOWN,
        in_discards=s("rx_dropped", 0),
        in_errors=s("rx_errors", 0),
        in_unknown=UNKNOWN,
        out_octets=s("tx_bytes", 0),
        out_ucast=s("tx_packets", 0),
        out_mcast=UNKNOWN,
        out_bcast=UNKNOWN,
        out_discards=s("tx_dropped", 0),
        out_errors=s("tx_errors", 0),
        promisc=int(link.promisc),
    )


def ethernet_counters(link: LinkState) -> bytes:
    """Ethernet counters (0:2) from the error counters Linux keeps; the rest unknown."""
    s = link.stats.get
    return encode_ethernet_counters(
        dot3StatsAlignmentErrors=s("rx_frame_errors", UNKNOWN),
        dot3StatsFCSErrors=s("rx_crc_errors", UNKNOWN),
        dot3StatsSingleCollisionFrames=UNKNOWN,
        dot3StatsMultipleCollisionFrames=UNKNOWN,
        dot3StatsSQETestErrors=s("tx_heartbeat_errors", UNKNOWN),
        dot3StatsDeferredTransmissions=UNKNOWN,
        dot3StatsLateCollisions=s("tx_window_errors", UNKNOWN),  # Linux counts late collisions there
        dot3StatsExcessiveCollisions=s("tx_aborted_errors", UNKNOWN),
        dot3StatsInternalMacTransmitErrors=s("tx_fifo_errors", UNKNOWN),
        dot3StatsCarrierSenseErrors=s("tx_carrier_errors", UNKNOWN),
        dot3StatsFrameTooLongs=s("rx_length_errors", UNKNOWN),
        dot3StatsInternalMacReceiveErrors=s("rx_fifo_errors", UNKNOWN),
        dot3StatsSymbolErrors=UNKNOWN,
    )


def counter_records(link: LinkState) -> tuple[bytes, int]:
    """(records, count) of one counter sample for the port: 0:1, 0:2 when Ethernet, and 0:1005."""
    records = [if_counters(link)]
    if link.arphrd == ARPHRD_ETHER:
        records.append(ethernet_counters(link))
    records.append(encode_port_name(link.ifname))
    return b"".join(records), len(records)
