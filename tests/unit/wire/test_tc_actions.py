"""Back-off's walk of an RTM_GETACTION dump, held to what pyroute2 decodes from the same bytes."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink import NLA_F_NESTED

from hwsflow.tools.bench_actions import dump_message, dump_messages, pyroute2_counters, sample_action
from hwsflow.wire import tc_nla
from hwsflow.wire.netlink import NLMSG_HDR, MalformedMessage, attr
from hwsflow.wire.tc_actions import RTM_NEWACTION, ActionCounter, parse_action_dump

U32 = st.integers(0, 2**32 - 1)


def test_a_dump_reads_back_as_counters_with_other_kinds_skipped():
    tc_nla.register()
    actions = tc_nla.action_list_attrs([
        {"kind": "sample", "rate": 64, "group": 3200, "trunc": 128, "index": 3, "cookie": b"\x01" * 16},
        {"kind": "gact", "action": "ok"},  # another program's action of another kind: not one of these
        {"kind": "sample", "rate": 1, "group": 7, "index": 9}])["attrs"]
    raw = dump_message([action for _name, action in actions])
    assert parse_action_dump(raw) == [ActionCounter(3, 64, 3200, 0), ActionCounter(9, 1, 7, 0)]
    assert parse_action_dump(raw) == pyroute2_counters(raw)


def test_the_64_bit_counter_wins_over_the_basic_one():
    raw = dump_message([sample_action(5, 10, 11, 2**40 + 7, pkt64=True),
                        sample_action(6, 10, 11, 2**31 + 1, pkt64=False)])
    assert [a.packets for a in parse_action_dump(raw)] == [2**40 + 7, 2**31 + 1]


def test_a_16_byte_basic_counter_as_64_bit_kernels_send_it():
    # struct gnet_stats_basic is u64 bytes + u32 packets, padded to 16 on 64-bit kernels (12 on 32-bit ones)
    basic = attr(1, struct.pack("=QI4x", 1500, 77))  # TCA_STATS_BASIC, no PKT64: fewer than 2**32 packets
    options = attr(2, struct.pack("=IIiii", 12, 0, 3, 1, 1)) + attr(3, struct.pack("=I", 100)) \
        + attr(5, struct.pack("=I", 4001))  # PARMS, RATE, PSAMPLE_GROUP
    action = attr(1, b"sample\0") + attr(2 | NLA_F_NESTED, options) + attr(4 | NLA_F_NESTED, basic)
    body = struct.pack("=BBH", 0, 0, 0) + attr(1 | NLA_F_NESTED, attr(0 | NLA_F_NESTED, action))
    raw = NLMSG_HDR.pack(NLMSG_HDR.size + len(body), RTM_NEWACTION, 2, 1, 0) + body
    assert parse_action_dump(raw) == [ActionCounter(12, 100, 4001, 77)]


def test_the_benchs_dump_is_what_the_kernel_fills_and_reads_back_whole():
    messages = dump_messages(70)
    assert len(messages) == 3  # 32 actions a message without TCA_FLAG_LARGE_DUMP_ON
    found = [a for raw in messages for a in parse_action_dump(raw)]
    assert [a.index for a in found] == list(range(1, 71))
    assert found == [a for raw in messages for a in pyroute2_counters(raw)]


actions_strategy = st.lists(st.tuples(U32, U32, U32, st.integers(0, 2**64 - 1), st.booleans(),
                                      st.binary(max_size=16), st.booleans()), max_size=tc_nla.TCA_ACT_MAX_PRIO)


@settings(max_examples=200, deadline=None)
@given(actions_strategy)
def test_the_walk_equals_pyroute2_on_any_dump(actions):
    built = [sample_action(index, rate, group, packets, pkt64, cookie) if sample
             else {"attrs": [["TCA_ACT_KIND", "gact"]]}
             for index, rate, group, packets, pkt64, cookie, sample in actions]
    raw = dump_message(built)
    assert parse_action_dump(raw) == pyroute2_counters(raw)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_bytes_give_counters_or_malformed_never_another_error(data):
    raw = bytearray(dump_message([sample_action(1, 2, 3, 4, True, b"c"), sample_action(5, 6, 7, 8, False, b"")]))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        parse_action_dump(bytes(raw[:cut]))
    except MalformedMessage:
        pass
