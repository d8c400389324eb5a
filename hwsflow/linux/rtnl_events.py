"""rtnetlink events that matter to hwsflow: links coming and going, qdiscs added and deleted, tc filters added
and deleted.

A raw NETLINK_ROUTE socket read on the event loop (pyroute2's asyncio sockets
do not run on uvloop).  parse_events is pure; only the few header fields the
agent acts on are read, and the agent asks rtnetlink for details when it acts.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from hwsflow.linux.psample_socket import no_enobufs, set_rcvbuf
from hwsflow.wire.netlink import NLMSG_HDR

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_TC = 0x8
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWQDISC, RTM_DELQDISC = 36, 37
RTM_NEWTFILTER, RTM_DELTFILTER = 44, 45
EVENT_RCVBUF = 4 << 20  # OVS can churn thousands of flower filters: keep the events, not ENOBUFS

_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_TCMSG = struct.Struct("=B3xiIII")  # family, ifindex, handle, parent, info
LINK_EVENTS = frozenset({RTM_NEWLINK, RTM_DELLINK})
TC_EVENTS = frozenset({RTM_NEWQDISC, RTM_DELQDISC, RTM_NEWTFILTER, RTM_DELTFILTER})


@dataclass(frozen=True)
class Event:
    kind: int  # RTM_NEWLINK, RTM_DELLINK, RTM_NEWQDISC, RTM_DELQDISC, RTM_NEWTFILTER or RTM_DELTFILTER
    ifindex: int
    parent: int = 0  # tc events: the qdisc's parent or the filter's parent (ingress/egress block)
    priority: int = 0  # RTM_NEWTFILTER, RTM_DELTFILTER: the filter's priority; 0 when a whole chain went


def parse_events(buf: bytes | bytearray | memoryview, nbytes: int) -> list[Event]:
    """The events in one datagram; anything else (chains, actions, malformed tails) is skipped."""
    events: list[Event] = []
    pos = 0
    while pos + NLMSG_HDR.size <= nbytes:
        length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(buf, pos)
        if length < NLMSG_HDR.size or pos + length > nbytes:
            break  # broken framing: nothing after it can be trusted
        body = pos + NLMSG_HDR.size
        if kind in LINK_EVENTS and length >= NLMSG_HDR.size + _IFINFO.size:
            events.append(Event(kind, _IFINFO.unpack_from(buf, body)[2]))
        elif kind in TC_EVENTS and length >= NLMSG_HDR.size + _TCMSG.size:
            _family, ifindex, _handle, parent, info = _TCMSG.unpack_from(buf, body)
            events.append(Event(kind, ifindex, parent, info >> 16))
        pos += (length + 3) & ~3
    return events


def open_event_socket() -> socket.socket:
    """A non-blocking socket subscribed to link and tc notifications."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                         NETLINK_ROUTE)
    set_rcvbuf(sock, EVENT_RCVBUF)
    sock.bind((0, RTMGRP_LINK | RTMGRP_TC))
    no_enobufs(sock)  # lost events show in /proc/net/netlink; the agent then reconciles everything
    return sock
