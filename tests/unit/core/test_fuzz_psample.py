"""Fuzzing psample decoding and the pipeline's fast path with structured bad messages.

test_psample.py and test_pipeline.py already hold the fast path to the general
parser on valid messages and on byte flips of them.  Here the damage is the
kind a kernel, a driver or a hostile local root process could send: attributes
truncated, overlong, empty, nested garbage, a 64 KiB DATA, lengths that lie,
other families and commands, several messages per read and recvmmsg slots.
The contract (fuzz/psample_target.py): the decoders raise only MalformedMessage
naming the attribute, and feed() ends every message in exactly one count.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.limits import deadline
from fuzz.psample_target import (
    DATAGRAM_SIZES, EGRESS_GROUP, FAMILY, HEADERS, IFINDEXES, INGRESS_GROUP, Setup, check_decoders, check_pieces,
    kernel_sample, one_input, seeds,
)
from hwsflow.wire import psample
from hwsflow.wire.netlink import (
    GENL_HDR, GENL_ID_CTRL, NLA_HDR, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDR, MalformedMessage, attr,
)

NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
SCALAR_SIZES = {number: wire.size for number, (wire, _name) in psample._SCALARS.items()}
MAX_DATA = 0xFFFF - NLA_HDR.size  # nla_len is 16 bits
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def raw_attr(length: int, attr_type: int, payload: bytes, pad: bool = True) -> bytes:
    """An attribute whose header may lie about its length."""
    raw = NLA_HDR.pack(length & 0xFFFF, attr_type & 0xFFFF) + payload
    return raw + b"\0" * (-len(raw) % 4) if pad else raw


def message(attrs: bytes, msg_type: int = FAMILY, cmd: int = psample.CMD_SAMPLE, length: int | None = None) -> bytes:
    body = GENL_HDR.pack(cmd, 1, 0) + attrs
    size = NLMSG_HDR.size + len(body) if length is None else length
    return NLMSG_HDR.pack(size & 0xFFFFFFFF, msg_type, 0, 1, 0) + body


def kernel_attrs(**fields: object) -> list[bytes]:
    """act_sample's usual message, one element per attribute."""
    raw = psample.build_attrs(kernel_sample(**fields))
    parts, pos = [], 0
    while pos < len(raw):
        length = NLA_HDR.unpack_from(raw, pos)[0]
        end = pos + ((length + 3) & ~3)
        parts.append(raw[pos:end])
        pos = end
    return parts


# ---------------------------------------------------------------- strategies

scalar_types = st.sampled_from(sorted(SCALAR_SIZES))
payloads = st.binary(max_size=40)


@st.composite
def huge_data(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from([1024, 9000, 65000, MAX_DATA]))
    return attr(psample.ATTR_DATA, bytes([draw(st.integers(0, 255))]) * size)


@st.composite
def nested_garbage(draw: st.DrawFn) -> bytes:
    inner = draw(st.lists(st.one_of(st.builds(attr, st.integers(0, 20), payloads), st.binary(max_size=12)),
                          max_size=5))
    return attr(psample.ATTR_TUNNEL | draw(st.sampled_from([0, NLA_F_NESTED])), b"".join(inner))


@st.composite
def lying_attr(draw: st.DrawFn) -> bytes:
    payload = draw(payloads)
    length = draw(st.sampled_from([0, 1, 3, NLA_HDR.size + len(payload) + 1, NLA_HDR.size + len(payload) + 64,
                                   0xFFFF]))
    return raw_attr(length, draw(st.integers(0, 20)), payload)


attributes = st.one_of(
    st.builds(attr, scalar_types, payloads),  # truncated, exact or overlong scalars
    st.builds(lambda t: attr(t, b""), st.integers(0, 20)),  # zero-length, every known type and beyond
    st.builds(lambda d: attr(psample.ATTR_DATA, d), st.binary(max_size=300)),
    huge_data(),
    nested_garbage(),
    lying_attr(),
    st.builds(attr, st.integers(17, 0x3FFF), payloads),  # attributes of future kernels
    st.builds(lambda t, f, d: attr(t | f, d), scalar_types, st.sampled_from([NLA_F_NESTED, NLA_F_NET_BYTEORDER]),
              payloads),
    st.builds(lambda t, d: raw_attr(NLA_HDR.size + len(d), t, d, pad=False), st.integers(0, 20), payloads),
)


@st.composite
def attribute_lists(draw: st.DrawFn) -> list[bytes]:
    """The kernel's layout with attributes removed, replaced, inserted or moved."""
    parts = kernel_attrs(group=draw(st.sampled_from([INGRESS_GROUP, EGRESS_GROUP, 77])),
                         oif=draw(st.sampled_from([0, 0, 9])))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 4]))):  # some messages stay whole: the counts need both
        op = draw(st.sampled_from(["drop", "replace", "insert", "swap"]))
        i = draw(st.integers(0, len(parts)))
        if op == "insert" or not parts:
            parts.insert(i, draw(attributes))
        elif op == "drop":
            del parts[min(i, len(parts) - 1)]
        elif op == "replace":
            parts[min(i, len(parts) - 1)] = draw(attributes)
        else:
            j = draw(st.integers(0, len(parts) - 1))
            i = min(i, len(parts) - 1)
            parts[i], parts[j] = parts[j], parts[i]
    return parts


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    body = b"".join(draw(attribute_lists()))
    msg_type = draw(st.sampled_from([FAMILY] * 8 + [FAMILY + 1, GENL_ID_CTRL, NLMSG_DONE, NLMSG_ERROR]))
    cmd = draw(st.sampled_from([psample.CMD_SAMPLE] * 6 + [psample.CMD_NEW_GROUP, psample.CMD_DEL_GROUP, 0xFF]))
    true_length = NLMSG_HDR.size + GENL_HDR.size + len(body)
    length = draw(st.sampled_from(["true"] * 6 + ["any", "max"]).flatmap(
        lambda lie: st.just(true_length) if lie == "true" else st.integers(0, true_length + 64) if lie == "any"
        else st.just(0xFFFFFFFF)))
    msg = message(body, msg_type, cmd, length)
    if draw(st.integers(0, 9)) == 0:
        msg = msg[:draw(st.integers(0, len(msg)))]  # a read cut short
    return msg + b"\0" * (-len(msg) % 4)


setups = st.builds(Setup, header=st.sampled_from(HEADERS), datagram_size=st.sampled_from(DATAGRAM_SIZES),
                   expanded=st.booleans(), ipv6=st.booleans(), ifindex=st.sampled_from(IFINDEXES))


# ---------------------------------------------------------------- the decoders


@FAST
@given(messages())
def test_decoders_raise_only_malformed_and_the_fast_path_agrees(msg):
    with deadline(5, "decoding one message"):
        check_decoders(msg)


@pytest.mark.parametrize("attr_type", sorted(SCALAR_SIZES))
def test_a_truncated_scalar_is_malformed_naming_it(attr_type):
    for size in range(SCALAR_SIZES[attr_type]):
        parts = kernel_attrs() + [attr(attr_type, b"\x01" * size)]
        with pytest.raises(MalformedMessage, match=f"attribute {attr_type} is {size} bytes, needs "
                                                   f"{SCALAR_SIZES[attr_type]}"):
            psample.decode_sample(message(b"".join(parts)))


@pytest.mark.parametrize("attr_type", sorted(SCALAR_SIZES))
def test_an_overlong_scalar_reads_its_leading_bytes(attr_type):
    """Netlink lets attributes grow (as nla_get_u32 reads the first 4 bytes): not an error."""
    size = SCALAR_SIZES[attr_type]
    value = bytes(range(1, size + 1))
    parts = [part for part in kernel_attrs() if NLA_HDR.unpack_from(part)[1] != attr_type]
    sample = psample.decode_sample(message(b"".join(parts + [attr(attr_type, value + b"\xff" * 5)])))
    name = psample._SCALARS[attr_type][1]
    assert getattr(sample, name) == int.from_bytes(value, "little" if struct.pack("=H", 1) == b"\1\0" else "big")


@pytest.mark.parametrize("attr_type, field, value", [
    (psample.ATTR_DATA, "data", b""), (psample.ATTR_USER_COOKIE, "cookie", b""),
    (psample.ATTR_TUNNEL, "tunnel", psample.TunnelKey()), (psample.ATTR_SAMPLE_PROBABILITY, "probability", True),
    (psample.ATTR_PAD, "unknown", []), (200, "unknown", [200]),
])
def test_zero_length_attributes_that_may_be_empty(attr_type, field, value):
    parts = [part for part in kernel_attrs() if NLA_HDR.unpack_from(part)[1] != attr_type]
    sample = psample.decode_sample(message(b"".join(parts + [attr(attr_type, b"")])))
    assert getattr(sample, field) == value


@FAST
@given(nested_garbage())
def test_nested_garbage_is_a_tunnel_or_malformed(tunnel):
    msg = message(b"".join(kernel_attrs()) + tunnel)
    try:
        sample = psample.decode_sample(msg)
    except MalformedMessage as err:
        assert "attribute" in str(err) or "trailing bytes" in str(err)
    else:
        assert isinstance(sample.tunnel, psample.TunnelKey)


@pytest.mark.parametrize("length", [0, 1, 3])
def test_an_attribute_shorter_than_its_header_is_malformed(length):
    msg = message(b"".join(kernel_attrs()) + raw_attr(length, psample.ATTR_PROTO, b"\0\0"))
    with pytest.raises(MalformedMessage, match=f"attribute {psample.ATTR_PROTO} has length {length}"):
        psample.decode_sample(msg)


def test_an_attribute_longer_than_the_message_is_malformed():
    msg = message(b"".join(kernel_attrs()) + raw_attr(0xFFFF, psample.ATTR_DATA, b"abc"))
    with pytest.raises(MalformedMessage, match=f"attribute {psample.ATTR_DATA} has length 65535"):
        psample.decode_sample(msg)


def test_the_largest_data_is_exported_cut_to_the_header():
    data = bytes(range(256)) * (MAX_DATA // 256) + b"\x99" * (MAX_DATA % 256)
    msg = psample.build_message(kernel_sample(data=data, orig_size=MAX_DATA), FAMILY)
    assert psample.decode_sample(msg).data == data
    counts = check_pieces([msg], Setup(header=1024, datagram_size=65000))
    assert counts.samples == 1


# ---------------------------------------------------------------- the pipeline


@FAST
@given(st.lists(messages(), min_size=1, max_size=6), setups)
def test_one_read_of_bad_messages_counts_each_once(msgs, setup):
    with deadline(10, "feeding one read"):
        check_pieces([b"".join(msgs)], setup)


@FAST
@given(st.lists(st.lists(messages(), min_size=0, max_size=3), min_size=2, max_size=5), setups)
def test_recvmmsg_slots_of_bad_messages_count_each_once(slots, setup):
    with deadline(10, "feeding recvmmsg slots"):
        check_pieces([b"".join(slot) for slot in slots], setup)


@pytest.mark.parametrize("length", [0, NLMSG_HDR.size - 1, 0xFFFFFFFF])
def test_a_lying_message_length_drops_the_rest_of_the_read_counted_once(length):
    good = psample.build_message(kernel_sample(), FAMILY)
    counts = check_pieces([good + message(b"".join(kernel_attrs()), length=length) + good], Setup())
    assert (counts.samples, counts.malformed, counts.messages) == (1, 1, 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_raw_bytes_through_the_atheris_check(data):
    """The atheris target's check, on bytes hypothesis draws (the first two choose the setup)."""
    with deadline(10, "one raw input"):
        one_input(data)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(seeds()), st.data())
def test_seeds_with_bytes_flipped_through_the_atheris_check(seed, data):
    mutated = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        mutated[data.draw(st.integers(2, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    with deadline(10, "one mutated seed"):
        one_input(bytes(mutated))
