"""rtnetlink event parsing: the header fields the agent acts on, bytes in, events out."""

from __future__ import annotations

import struct

from hwsflow.linux.rtnl_events import (
    RTM_DELLINK, RTM_DELQDISC, RTM_DELTFILTER, RTM_NEWLINK, RTM_NEWQDISC, RTM_NEWTFILTER, Event, parse_events,
)


def _msg(kind: int, body: bytes) -> bytes:
    data = struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body
    return data + bytes(-len(data) % 4)


def _link(kind: int, ifindex: int) -> bytes:
    return _msg(kind, struct.pack("=BxHiII", 0, 1, ifindex, 0, 0) + b"\x08\x00\x03\x00eth\x00")


def _tc(kind: int, ifindex: int, parent: int, priority: int) -> bytes:
    return _msg(kind, struct.pack("=B3xiIII", 0, ifindex, 0, parent, priority << 16 | 0x0300))


def test_link_and_tc_events_are_parsed_from_one_datagram():
    data = _link(RTM_NEWLINK, 7) + _tc(RTM_DELTFILTER, 7, 0xFFFFFFF2, 1) + _tc(RTM_DELQDISC, 7, 0xFFFFFFF1, 0) \
        + _tc(RTM_NEWTFILTER, 7, 0xFFFFFFF2, 3) + _tc(RTM_NEWQDISC, 7, 0xFFFFFFF1, 0) \
        + _tc(100, 7, 0xFFFFFFF2, 0) + _link(RTM_DELLINK, 9)  # 100: RTM_NEWCHAIN, not acted on
    assert parse_events(data, len(data)) == [
        Event(RTM_NEWLINK, 7), Event(RTM_DELTFILTER, 7, 0xFFFFFFF2, 1), Event(RTM_DELQDISC, 7, 0xFFFFFFF1, 0),
        Event(RTM_NEWTFILTER, 7, 0xFFFFFFF2, 3), Event(RTM_NEWQDISC, 7, 0xFFFFFFF1, 0), Event(RTM_DELLINK, 9),
    ]


def test_truncated_and_broken_framing_stop_parsing_without_raising():
    data = _link(RTM_NEWLINK, 7) + _link(RTM_DELLINK, 8)
    assert parse_events(data, len(data) - 3) == [Event(RTM_NEWLINK, 7)]
    assert parse_events(b"\x04\x00\x00\x00" + bytes(20), 24) == []  # a length below the header
    short = _msg(RTM_NEWLINK, b"\x00\x00")  # too short for an ifinfomsg: skipped
    data = short + _link(RTM_DELLINK, 3)
    assert parse_events(data, len(data)) == [Event(RTM_DELLINK, 3)]
