"""Sample actions' counters from the bytes of an RTM_GETACTION dump (`tc actions list action sample`).

Back-off reads every sample action's packet counter once a tick, on the event
loop, so the walk must be cheap on a host with thousands of them: pyroute2's
decoder takes about 15 times as long (`hwsflow bench`'s back-off line), and
this walk reads only the four numbers back-off needs.  The attribute numbers
and structs are tc_nla's tables, the one declaration of these layouts; tests
hold this walk to what pyroute2 decodes from the same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from hwsflow.wire import tc_nla
from hwsflow.wire.netlink import NLA_U32, NLA_U64, NLMSG_HDR, MalformedMessage, attr_fields, iter_attrs, message_extent

RTM_NEWACTION = 48  # the type of each message of the dump's answer


def _code(table: tuple[tuple[Any, ...], ...], name: str) -> int:
    return int(next(entry[0] for entry in table if entry[1] == name))


def _struct(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct("=" + "".join(fmt for _, fmt in fields))


_TCAMSG = _struct(tc_nla.TcaMsg.fields)
_ROOT_TAB = _code(tc_nla.TcaMsg.nla_map, "TCA_ROOT_TAB")
_KIND = _code(tc_nla.TcAction.nla_map, "TCA_ACT_KIND")
_OPTIONS = _code(tc_nla.TcAction.nla_map, "TCA_ACT_OPTIONS")
_STATS = _code(tc_nla.TcAction.nla_map, "TCA_ACT_STATS")
_PARMS = _code(tc_nla.SampleOptions.nla_map, "TCA_SAMPLE_PARMS")
_RATE = _code(tc_nla.SampleOptions.nla_map, "TCA_SAMPLE_RATE")
_GROUP = _code(tc_nla.SampleOptions.nla_map, "TCA_SAMPLE_PSAMPLE_GROUP")
_BASIC = _code(tc_nla.ActStats.nla_map, "TCA_STATS_BASIC")
_PKT64 = _code(tc_nla.ActStats.nla_map, "TCA_STATS_PKT64")
_TC_GEN = _struct(tc_nla.SampleOptions.tc_gen.fields)  # index first
_BASIC_STATS = _struct(tc_nla.ActStats.basic.fields)  # bytes, packets
_SAMPLE = b"sample"


@dataclass(frozen=True, slots=True)
class ActionCounter:
    """One sample action as `tc actions list action sample` shows it: what back-off reads each tick."""

    index: int
    rate: int
    group: int
    packets: int


def _packets(buf: bytes, start: int, end: int) -> int:
    """TCA_ACT_STATS: the 64-bit counter where the kernel sends one (newer kernels), else the basic 32-bit one."""
    basic = 0
    for attr_type, value, stop in iter_attrs(buf, start, end):
        if attr_type == _PKT64:
            return int(attr_fields(NLA_U64, buf, value, stop, "TCA_STATS_PKT64")[0])
        if attr_type == _BASIC:
            basic = int(attr_fields(_BASIC_STATS, buf, value, stop, "TCA_STATS_BASIC")[1])
    return basic


def _action(buf: bytes, start: int, end: int) -> ActionCounter | None:
    """One TCA_ACT_PRIO_n nest; None when it is not a sample action with its parameters."""
    kind = options = stats = None
    for attr_type, value, stop in iter_attrs(buf, start, end):
        if attr_type == _KIND:
            kind = buf[value:stop].rstrip(b"\0")
        elif attr_type == _OPTIONS:
            options = (value, stop)
        elif attr_type == _STATS:
            stats = (value, stop)
    if kind != _SAMPLE or options is None:
        return None
    index = rate = group = None
    for attr_type, value, stop in iter_attrs(buf, *options):
        if attr_type == _PARMS:
            index = int(attr_fields(_TC_GEN, buf, value, stop, "TCA_SAMPLE_PARMS")[0])
        elif attr_type == _RATE:
            rate = int(attr_fields(NLA_U32, buf, value, stop, "TCA_SAMPLE_RATE")[0])
        elif attr_type == _GROUP:
            group = int(attr_fields(NLA_U32, buf, value, stop, "TCA_SAMPLE_PSAMPLE_GROUP")[0])
    if index is None:
        return None
    return ActionCounter(index, rate or 0, group or 0, _packets(buf, *stats) if stats is not None else 0)


def parse_action_dump(message: bytes) -> list[ActionCounter]:
    """The sample actions in one RTM_NEWACTION message of the dump (netlink header included), in their order.
    Other kinds are skipped; MalformedMessage when a length does not fit."""
    _type, start, end = message_extent(message, 0, len(message))
    pos = start + NLMSG_HDR.size + _TCAMSG.size
    if pos > end:
        raise MalformedMessage(f"a {end - start}-byte message is shorter than its tcamsg")
    found = []
    for attr_type, value, stop in iter_attrs(message, pos, end):
        if attr_type != _ROOT_TAB:
            continue
        for _prio, action_start, action_end in iter_attrs(message, value, stop):
            counter = _action(message, action_start, action_end)
            if counter is not None:
                found.append(counter)
    return found
