"""psample decoding: the general parser (fast_decode and its agreement with it: tests/test_fastpath.py)."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsflow.wire import psample
from hwsflow.wire.netlink import MalformedMessage, NLA_HDR, NLMSG_HDR, attr

FAMILY = 0x1C


def ingress_sample(**kw) -> psample.Sample:
    """What act_sample emits at ingress on 5.13+ kernels."""
    base = dict(group=1000, seq=41, raw_rate=10, orig_size=98, iif=3, data=bytes(range(98)),
                timestamp=1_700_000_000_000_000_000, proto=0x0800)
    base.update(kw)
    return psample.Sample(**base)


def test_general_parser_reads_every_attribute():
    sample = psample.Sample(
        group=7, seq=0xFFFFFFFF, raw_rate=1 << 31, probability=True, orig_size=1514, iif=0xFFFF, oif=2,
        data=b"\xaa" * 13, refcount=None, out_tc=5, out_tc_occ=1 << 40, latency=12345, timestamp=99,
        proto=0x86DD, cookie=b"hwsflow\x01\0\0\0\7", tunnel=psample.TunnelKey(id=42, ttl=64),
    )
    decoded = psample.decode_sample(psample.build_message(sample, FAMILY))
    assert decoded == sample
    assert decoded.rate == 2  # probability 2**31 of 2**32 is 1-in-2


def test_unknown_attributes_are_skipped_and_recorded():
    msg = psample.build_message(ingress_sample(), FAMILY)
    extra = attr(200, b"\x01\x02\x03")
    msg = NLMSG_HDR.pack(len(msg) + len(extra), FAMILY, 0, 0, 0) + msg[NLMSG_HDR.size:] + extra
    decoded = psample.decode_sample(msg)
    assert decoded.unknown == [200]
    assert decoded.group == 1000


def test_group_refcount_is_not_mistaken_for_tunnel():
    msg = psample.build_message(ingress_sample(), FAMILY) + attr(psample.ATTR_GROUP_REFCOUNT, struct.pack("=I", 3))
    msg = NLMSG_HDR.pack(len(msg), FAMILY, 0, 0, 0) + msg[NLMSG_HDR.size:]
    assert psample.decode_sample(msg).refcount == 3


@pytest.mark.parametrize("cut", [3, 17, 21, 30])
def test_truncated_messages_are_malformed(cut):
    msg = psample.build_message(ingress_sample(), FAMILY)
    with pytest.raises(MalformedMessage):
        psample.decode_sample(msg[:cut])


def test_attribute_overrunning_message_is_malformed():
    msg = bytearray(psample.build_message(ingress_sample(), FAMILY))
    NLA_HDR.pack_into(msg, NLMSG_HDR.size + 4, 200, psample.ATTR_IIFINDEX)
    with pytest.raises(MalformedMessage):
        psample.decode_sample(bytes(msg))


def test_missing_mandatory_attribute_is_malformed():
    body = attr(psample.ATTR_SAMPLE_GROUP, struct.pack("=I", 1))
    msg = NLMSG_HDR.pack(NLMSG_HDR.size + 4 + len(body), FAMILY, 0, 0, 0) + b"\0\1\0\0" + body
    with pytest.raises(MalformedMessage, match="mandatory"):
        psample.decode_sample(msg)


def test_probability_conversion():
    assert psample.probability_to_rate(1 << 32 - 1) == 2
    assert psample.probability_to_rate(0xFFFFFFFF) == 1
    assert psample.probability_to_rate(0) == 0xFFFFFFFF
    assert psample.probability_to_rate(429497) == 10000


@given(st.binary(max_size=400))
def test_general_parser_only_raises_malformed(raw):
    try:
        psample.decode_sample(raw)
    except MalformedMessage:
        pass
