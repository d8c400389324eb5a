"""The tc messages hwsflow builds, byte for byte against iproute2's, and decoded back."""

import socket

import pytest

from hwsflow.linux import tc
from hwsflow.wire.tc_nla import TC_ACT_UNSPEC, TcMsg

# TCA_OPTIONS payload that iproute2 6.1 sends for
#   tc filter add dev lo ingress prio 3 protocol all matchall skip_hw \
#      action sample rate 10 group 5 trunc 128 continue cookie 68777366
# captured with `strace -e sendmsg -xx` (the same bytes whatever the kernel answers).
IPROUTE2_OPTIONS = bytes.fromhex(
    "5c000200"  # TCA_OPTIONS header (len 92, type 2)
    "50000200" "4c000100"  # TCA_MATCHALL_ACT, TCA_ACT_PRIO_1
    "0b000100" "73616d706c650000"  # TCA_ACT_KIND "sample"
    "34000280"  # TCA_ACT_OPTIONS, NLA_F_NESTED
    "18000200" "00000000" "00000000" "ffffffff" "00000000" "00000000"  # PARMS, action -1
    "08000300" "0a000000"  # RATE 10
    "08000500" "05000000"  # PSAMPLE_GROUP 5
    "08000400" "80000000"  # TRUNC_SIZE 128
    "08000600" "68777366"  # TCA_ACT_COOKIE
    "08000300" "01000000"  # TCA_MATCHALL_FLAGS = SKIP_HW, host order
)


def _encode(spec: tc.FilterSpec, cookie: bytes | None = None) -> bytes:
    msg = tc.build_filter_msg(spec)
    if cookie is not None:  # the iproute2 capture used a 4-byte cookie
        act = msg.get_attr("TCA_OPTIONS")["attrs"][0][1]["attrs"][0][1]["attrs"]
        act[-1][1] = cookie
    msg["header"]["type"] = 44
    msg["header"]["flags"] = 0x605
    msg.encode()
    return bytes(msg.data)


def test_filter_message_is_byte_identical_to_iproute2():
    spec = tc.FilterSpec(ifindex=1, ifname="lo", direction="ingress", rate=10, group=5, trunc=128,
                         priority=3, offload="software")
    data = _encode(spec, cookie=b"hwsf")
    assert data[16:36] == bytes.fromhex("00000000" "01000000" "00000000" "f2ffffff" "00030300")
    assert data[36:52] == bytes.fromhex("0d000100") + b"matchall\0" + b"\0\0\0"
    assert data[52:] == IPROUTE2_OPTIONS


@pytest.mark.parametrize("offload, flags", [("auto", None), ("required", 2), ("software", 1)])
def test_offload_policy_sets_host_order_flags(offload, flags):
    spec = tc.FilterSpec(1, "p", "ingress", 10, 5, 128, offload=offload)
    data = _encode(spec)
    decoded = TcMsg(data)
    decoded.decode()
    assert decoded.get_nested("TCA_OPTIONS", "TCA_MATCHALL_FLAGS") == flags
    flags_attr = bytes.fromhex("08000300") + (flags or 0).to_bytes(4, "little")
    # on the wire in host order, last in TCA_OPTIONS (pyroute2's matchall sends them big-endian)
    assert data.endswith(flags_attr) == (flags is not None)


def test_filter_message_round_trips_into_filter_state():
    spec = tc.FilterSpec(ifindex=7, ifname="p", direction="egress", rate=400, group=1003, trunc=96,
                         priority=9, chain=4)
    decoded = TcMsg(_encode(spec))
    decoded.decode()
    state = tc.parse_filter(decoded, "egress")
    assert state is not None
    assert (state.ifindex, state.priority, state.chain, state.protocol) == (7, 9, 4, 0x0003)
    assert (state.rate, state.group, state.trunc, state.verdict) == (400, 1003, 96, TC_ACT_UNSPEC)
    assert state.ours and state.cookie == tc.make_cookie(1003)
    assert decoded["parent"] == 0xFFFFFFF3


def test_cookie_recognition():
    assert tc.is_our_cookie(tc.make_cookie(1))
    assert not tc.is_our_cookie(b"ovs-cookie-12345")
    assert not tc.is_our_cookie(b"")
    assert not tc.is_our_cookie(None)


def test_registered_plugins_serve_pyroute2_tcmsg():
    """pyroute2's own tcmsg (used by IPRoute for other calls) now decodes sample actions and flags."""
    from pyroute2.netlink.rtnl.tcmsg import tcmsg as PyrouteTcMsg

    spec = tc.FilterSpec(1, "p", "ingress", 10, 5, 128, offload="required")
    decoded = PyrouteTcMsg(_encode(spec))
    decoded.decode()
    action = decoded.get_nested("TCA_OPTIONS", "TCA_MATCHALL_ACT", "TCA_ACT_PRIO_1")
    assert decoded.get_nested("TCA_OPTIONS", "TCA_MATCHALL_FLAGS") == 2
    assert action.get_nested("TCA_ACT_OPTIONS", "TCA_SAMPLE_RATE") == 10
    assert action.get_attr("TCA_ACT_COOKIE") == tc.make_cookie(5)


def test_parse_filter_ignores_other_filters():
    msg = TcMsg()
    msg["index"], msg["handle"], msg["parent"], msg["info"] = 1, 1, 0xFFFFFFF2, (2 << 16) | socket.htons(3)
    msg["attrs"] = [["TCA_KIND", "flower"]]
    msg.encode()
    decoded = TcMsg(msg.data)
    decoded.decode()
    assert tc.parse_filter(decoded, "ingress") is None


def _spec() -> tc.FilterSpec:
    return tc.FilterSpec(ifindex=5, ifname="vport1", direction="ingress", rate=1, group=7, trunc=128)


def test_a_policer_at_hwsflows_priority_is_named_with_how_to_remove_it():
    message = tc.priority_taken_message(_spec(), "matchall", ["police"])
    assert "port vport1: ingress priority 1 is held by another program's matchall filter with a police action" \
        in message
    assert "Open vSwitch's ingress policer" in message
    assert "ovs-vsctl set interface vport1 ingress_policing_rate=0" in message


def test_another_filter_at_hwsflows_priority_is_named_with_the_priority_to_change():
    message = tc.priority_taken_message(_spec(), "flower", [])
    assert "held by another program's flower filter;" in message and "policer" not in message
    assert "Set another `priority` for this port" in message
    assert "unknown filter" in tc.priority_taken_message(_spec(), None, [])
    assert tc.describe_holder("matchall", ["police", "mirred"]) == "matchall filter with a police + mirred actions"


# TCA_ACT_TAB that iproute2 6.1 sends for
#   tc actions change action sample rate 10 group 5 trunc 128 continue index 7 cookie 68777366
# captured with `strace -e sendmsg -xx` (flags REQUEST|ACK|REPLACE|CREATE: hwsflow leaves CREATE out)
IPROUTE2_CHANGE = bytes.fromhex(
    "50000100" "4c000100"  # TCA_ACT_TAB, TCA_ACT_PRIO_1
    "0b000100" "73616d706c650000"  # TCA_ACT_KIND "sample"
    "34000280"  # TCA_ACT_OPTIONS, NLA_F_NESTED
    "18000200" "07000000" "00000000" "ffffffff" "00000000" "00000000"  # PARMS: index 7, action -1
    "08000300" "0a000000"  # RATE 10
    "08000500" "05000000"  # PSAMPLE_GROUP 5
    "08000400" "80000000"  # TRUNC_SIZE 128
    "08000600" "68777366"  # TCA_ACT_COOKIE
)


def test_rate_change_message_is_byte_identical_to_iproute2():
    spec = tc.FilterSpec(ifindex=1, ifname="lo", direction="ingress", rate=10, group=5, trunc=128)
    msg = tc.build_action_msg(spec, index=7)
    act = msg.get_attr("TCA_ROOT_TAB")["attrs"][0][1]["attrs"]
    act[-1][1] = b"hwsf"  # the iproute2 capture used a 4-byte cookie
    msg["header"]["type"] = 48
    msg["header"]["flags"] = 0x105
    msg.encode()
    data = bytes(msg.data)
    assert data[16:20] == bytes(4)  # struct tcamsg: AF_UNSPEC and padding
    assert data[20:] == IPROUTE2_CHANGE


def test_filter_state_carries_the_action_index():
    spec = tc.FilterSpec(ifindex=7, ifname="p", direction="ingress", rate=400, group=1003, trunc=96)
    msg = tc.build_filter_msg(spec)
    sample = msg.get_attr("TCA_OPTIONS")["attrs"][0][1]["attrs"][0][1]["attrs"][1][1]["attrs"][0][1]
    sample["index"] = 42  # as the kernel dumps it
    decoded = TcMsg(_encode_msg(msg))
    decoded.decode()
    state = tc.parse_filter(decoded, "ingress")
    assert state is not None and state.index == 42


def _encode_msg(msg: TcMsg) -> bytes:
    msg["header"]["type"] = 44
    msg.encode()
    return bytes(msg.data)


def test_the_action_dump_asks_for_sample_actions_like_iproute2():
    # `tc actions list action sample` (iproute2 6.1): TCA_ACT_TAB { 1 { TCA_ACT_KIND "sample" } }
    msg = tc.action_dump_msg()
    msg["header"]["type"] = 50
    msg.encode()
    assert bytes(msg.data)[16:] == bytes.fromhex("00000000" "14000100" "10000100" "0b000100") + b"sample\0\0"
