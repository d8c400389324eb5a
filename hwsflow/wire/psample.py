"""psample generic-netlink messages: decoding (and, for tests and the benchmark, building).

Pure code over bytes.  Attribute numbering and the kernel's emission order are
in REFERENCE section 1 and include/uapi/linux/psample.h.  Two decoders exist on
purpose: decode_sample() is the general, defensive parser; fast_decode() reads
the exact layout act_sample produces on current kernels with two struct calls and
returns None for anything else, so the caller falls back to the general parser.
Tests hold the two to identical results.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field

from hwsflow.wire.netlink import (
    GENL_HDR,
    HEADERS_LEN,
    NLA_HDR,
    NLMSG_HDR,
    MalformedMessage,
    attr,
    iter_attrs,
    message_extent,
)

# uapi/linux/psample.h
ATTR_IIFINDEX = 0
ATTR_OIFINDEX = 1
ATTR_ORIGSIZE = 2
ATTR_SAMPLE_GROUP = 3
ATTR_GROUP_SEQ = 4
ATTR_SAMPLE_RATE = 5
ATTR_DATA = 6
ATTR_GROUP_REFCOUNT = 7
ATTR_TUNNEL = 8
ATTR_PAD = 9
ATTR_OUT_TC = 10
ATTR_OUT_TC_OCC = 11
ATTR_LATENCY = 12
ATTR_TIMESTAMP = 13
ATTR_PROTO = 14
ATTR_USER_COOKIE = 15
ATTR_SAMPLE_PROBABILITY = 16

CMD_SAMPLE = 0
CMD_GET_GROUP = 1
CMD_NEW_GROUP = 2
CMD_DEL_GROUP = 3

_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")

# tunnel key attributes worth naming (uapi psample_tunnel_key_attr)
_TUNNEL_NAMES = {
    0: "id", 1: "ipv4_src", 2: "ipv4_dst", 3: "tos", 4: "ttl", 5: "dont_fragment",
    6: "csum", 7: "oam", 8: "geneve_opts", 9: "tp_src", 10: "tp_dst", 11: "vxlan_opts",
    12: "ipv6_src", 13: "ipv6_dst", 15: "erspan_opts", 16: "ipv4_info_bridge",
}
# fixed-size attributes: (attribute, wire struct, Sample field)
_SCALARS: dict[int, tuple[struct.Struct, str]] = {
    ATTR_IIFINDEX: (_U16, "iif"),
    ATTR_OIFINDEX: (_U16, "oif"),
    ATTR_ORIGSIZE: (_U32, "orig_size"),
    ATTR_SAMPLE_GROUP: (_U32, "group"),
    ATTR_GROUP_SEQ: (_U32, "seq"),
    ATTR_SAMPLE_RATE: (_U32, "raw_rate"),
    ATTR_GROUP_REFCOUNT: (_U32, "refcount"),
    ATTR_OUT_TC: (_U16, "out_tc"),
    ATTR_OUT_TC_OCC: (_U64, "out_tc_occ"),
    ATTR_LATENCY: (_U64, "latency"),
    ATTR_TIMESTAMP: (_U64, "timestamp"),
    ATTR_PROTO: (_U16, "proto"),
}


@dataclass(slots=True)
class Sample:
    """One decoded PSAMPLE_CMD_SAMPLE message.  Absent attributes stay at their defaults."""

    group: int = 0
    seq: int = 0
    raw_rate: int = 0  # SAMPLE_RATE as sent: 1-in-N, or a probability out of 2**32
    probability: bool = False  # SAMPLE_PROBABILITY flag present (6.11+)
    orig_size: int = 0
    iif: int = 0  # 16 bits on the wire: never use as the port's ifindex on its own
    oif: int = 0
    data: bytes = b""
    refcount: int | None = None
    out_tc: int | None = None
    out_tc_occ: int | None = None
    latency: int | None = None
    timestamp: int | None = None
    proto: int | None = None
    cookie: bytes | None = None
    tunnel: dict[str, bytes] | None = None
    unknown: list[int] = field(default_factory=list)  # attribute types skipped

    @property
    def rate(self) -> int:
        """The 1-in-N rate sFlow reports (a probability is converted, rounded)."""
        return probability_to_rate(self.raw_rate) if self.probability else self.raw_rate


def probability_to_rate(probability: int) -> int:
    """1-in-N from a probability out of 2**32 (0 never samples; it maps to the largest rate)."""
    if probability <= 0:
        return 0xFFFFFFFF
    return max(1, min(0xFFFFFFFF, round((1 << 32) / probability)))


def decode_sample(buf: bytes | bytearray | memoryview, offset: int = 0, end: int | None = None) -> Sample:
    """General parser of one whole netlink message (nlmsghdr + genlmsghdr + attributes)."""
    end = len(buf) if end is None else end
    _msg_type, start, stop = message_extent(buf, offset, end)
    if stop - start < HEADERS_LEN:
        raise MalformedMessage("no generic netlink header")
    cmd = buf[start + NLMSG_HDR.size]
    if cmd != CMD_SAMPLE:
        raise MalformedMessage(f"psample command {cmd} is not SAMPLE")
    sample = Sample()
    seen: set[int] = set()
    for attr_type, value_start, value_end in iter_attrs(buf, start + HEADERS_LEN, stop):
        _apply_attr(sample, attr_type, buf, value_start, value_end)
        seen.add(attr_type)
    for required in (ATTR_SAMPLE_GROUP, ATTR_SAMPLE_RATE, ATTR_ORIGSIZE):
        if required not in seen:
            raise MalformedMessage(f"missing mandatory attribute {required}")
    return sample


def _apply_attr(sample: Sample, attr_type: int, buf, start: int, end: int) -> None:
    scalar = _SCALARS.get(attr_type)
    if scalar is not None:
        wire, name = scalar
        if end - start < wire.size:
            raise MalformedMessage(f"attribute {attr_type} is {end - start} bytes, needs {wire.size}")
        setattr(sample, name, wire.unpack_from(buf, start)[0])
    elif attr_type == ATTR_DATA:
        sample.data = bytes(buf[start:end])
    elif attr_type == ATTR_USER_COOKIE:
        sample.cookie = bytes(buf[start:end])
    elif attr_type == ATTR_SAMPLE_PROBABILITY:
        sample.probability = True
    elif attr_type == ATTR_TUNNEL:
        sample.tunnel = {
            _TUNNEL_NAMES.get(t, str(t)): bytes(buf[s:e]) for t, s, e in iter_attrs(buf, start, end)
        }
    elif attr_type != ATTR_PAD:
        sample.unknown.append(attr_type)  # newer kernels may add attributes: skip, never fail


# ---------------------------------------------------------------- fast path

# The layout act_sample emits at ingress since 5.13 (REFERENCE section 1):
# IIFINDEX, SAMPLE_RATE, ORIGSIZE, SAMPLE_GROUP, GROUP_SEQ, TIMESTAMP, PROTO, DATA.
# Hot path: what the layout fixes is compared, and its values read, at fixed offsets of the first 84
# bytes, instead of walking the attributes.
# FAST_VALUES reads the values:
#   0 nlmsg_len  1 iif  2 rate  3 orig size  4 group  5 seq  6 DATA's nla_len
FAST_VALUES = struct.Struct("=I 20x H 6x I 4x I 4x I 4x I 20x H 2x")
FAST_SIZE = FAST_VALUES.size  # where DATA's value starts
_FAMILY = -1  # stands for the family id in _FIXED


def _nla_header(nla_len: int, nla_type: int) -> int:
    """An attribute header read as one native u32, as the checks compare it."""
    return struct.unpack("=I", NLA_HDR.pack(nla_len, nla_type))[0]


# (offset, struct code, value) of everything the layout fixes: nlmsg_type, the command and each
# attribute header (nla_len, nla_type) up to DATA's type (its nla_len varies)
_FIXED = (
    (4, "H", _FAMILY), (16, "B", CMD_SAMPLE),
    (20, "I", _nla_header(NLA_HDR.size + 2, ATTR_IIFINDEX)),
    (28, "I", _nla_header(NLA_HDR.size + 4, ATTR_SAMPLE_RATE)),
    (36, "I", _nla_header(NLA_HDR.size + 4, ATTR_ORIGSIZE)),
    (44, "I", _nla_header(NLA_HDR.size + 4, ATTR_SAMPLE_GROUP)),
    (52, "I", _nla_header(NLA_HDR.size + 4, ATTR_GROUP_SEQ)),
    (60, "I", _nla_header(NLA_HDR.size + 8, ATTR_TIMESTAMP)),
    (72, "I", _nla_header(NLA_HDR.size + 2, ATTR_PROTO)),
    (82, "H", ATTR_DATA),
)
FAST_CHECK = struct.Struct("=" + "".join(
    f"{offset - previous}x{code}" for (offset, code, _), previous in
    zip(_FIXED, [0] + [o + struct.calcsize(c) for o, c, _ in _FIXED])))


def fast_signature(family_id: int) -> tuple[int, ...]:
    """What FAST_CHECK reads from this family's SAMPLE messages in the usual layout."""
    return tuple(family_id if value == _FAMILY else value for _, _, value in _FIXED)


def _check_slots(stride: int, count: int, aligned: bool) -> None:
    """count slots, stride bytes apart, must each hold the fast layout (4-byte aligned if asked)."""
    if count < 1 or (count > 1 and (stride < FAST_SIZE or (aligned and stride % 4))):
        raise ValueError(f"{count} slots of stride {stride}: each must hold the {FAST_SIZE}-byte fast layout"
                         + (", 4-byte aligned" if aligned else ""))


Check = tuple[str, int, int, int, memoryview]  # struct code, start, stop, step (in items), expected items


def chunk_checks(family_id: int, stride: int, count: int) -> list[Check]:
    """fast_decode's layout test for count slots, stride bytes apart, as one C-level comparison per fixed
    field: a strided slice of a memoryview of the slots (cast to the field's code) against an array of
    the expected value.  stride must be a multiple of 4 when count > 1 (the u32 fields stay aligned)."""
    _check_slots(stride, count, aligned=True)
    checks = []
    for (offset, code, _), value in zip(_FIXED, fast_signature(family_id)):
        size = struct.calcsize(code)
        step = stride // size if count > 1 else 1
        start = offset // size
        checks.append((code, start, start + step * (count - 1) + 1, step, memoryview(array(code, [value] * count))))
    return checks


def chunk_values(stride: int, count: int) -> struct.Struct:
    """FAST_VALUES of count recvmmsg slots, stride bytes apart, in one unpack: seven values a slot."""
    _check_slots(stride, count, aligned=False)
    gap = f" {stride - FAST_SIZE}x " if count > 1 else ""
    return struct.Struct("=" + gap.join([FAST_VALUES.format.lstrip("=")] * count))


def _message_lengths() -> tuple[int, ...]:
    made: dict[int, int] = {}  # each length object made once: ~16k distinct ints, not 64k
    lengths = []
    for nla_len in range(1 << 16):
        length = FAST_SIZE - NLA_HDR.size + ((nla_len + 3) & ~3) if nla_len >= NLA_HDR.size else -1
        lengths.append(made.setdefault(length, length))
    return tuple(lengths)


# FAST_MSG_LEN[DATA's nla_len]: the length of a message that DATA, the last attribute, ends exactly
# (padding included), or -1 when nla_len is too short to be an attribute.  One subscript in the hot
# path replaces three tests.
FAST_MSG_LEN = _message_lengths()


def fast_decode(buf: bytes | bytearray | memoryview, offset: int, end: int, family_id: int):
    """(group, seq, rate, orig_size, iif, data_start, data_len, msg_end) for the usual layout, else None.

    None means "use decode_sample": anything unusual (egress with OIFINDEX,
    extra metadata, a cookie, probability, a tunnel, a short message) takes the
    general parser, which also handles every malformed case.  SamplePipeline makes these same
    checks for a whole chunk at once (chunk_checks); tests hold both to the general parser.
    """
    if end - offset < FAST_SIZE:
        return None
    v = FAST_VALUES.unpack_from(buf, offset)
    msg_len = v[0]
    # DATA must be the last attribute and exactly fill the message (padding aside)
    if (FAST_CHECK.unpack_from(buf, offset) != fast_signature(family_id) or msg_len > end - offset
            or FAST_MSG_LEN[v[6]] != msg_len):
        return None
    return v[4], v[5], v[2], v[3], v[1], offset + FAST_SIZE, v[6] - NLA_HDR.size, offset + msg_len


# ---------------------------------------------------------------- building (tests, benchmark)


def build_attrs(sample: Sample) -> bytes:
    """Attributes in the kernel's order of emission (psample_sample_packet)."""
    parts: list[bytes] = []
    if sample.iif:
        parts.append(attr(ATTR_IIFINDEX, _U16.pack(sample.iif)))
    if sample.oif:
        parts.append(attr(ATTR_OIFINDEX, _U16.pack(sample.oif)))
    parts.append(attr(ATTR_SAMPLE_RATE, _U32.pack(sample.raw_rate)))
    parts.append(attr(ATTR_ORIGSIZE, _U32.pack(sample.orig_size)))
    parts.append(attr(ATTR_SAMPLE_GROUP, _U32.pack(sample.group)))
    parts.append(attr(ATTR_GROUP_SEQ, _U32.pack(sample.seq)))
    for attr_type, value, wire in (
        (ATTR_OUT_TC, sample.out_tc, _U16),
        (ATTR_OUT_TC_OCC, sample.out_tc_occ, _U64),
        (ATTR_LATENCY, sample.latency, _U64),
        (ATTR_TIMESTAMP, sample.timestamp, _U64),
        (ATTR_PROTO, sample.proto, _U16),
    ):
        if value is not None:
            parts.append(attr(attr_type, wire.pack(value)))
    if sample.data:
        parts.append(attr(ATTR_DATA, sample.data))
    if sample.tunnel is not None:
        numbers = {name: number for number, name in _TUNNEL_NAMES.items()}
        nested = b"".join(attr(numbers[k] if k in numbers else int(k), v) for k, v in sample.tunnel.items())
        parts.append(attr(ATTR_TUNNEL, nested))
    if sample.cookie:
        parts.append(attr(ATTR_USER_COOKIE, sample.cookie))
    if sample.probability:
        parts.append(attr(ATTR_SAMPLE_PROBABILITY, b""))
    return b"".join(parts)


def build_message(sample: Sample, family_id: int, seq: int = 0, pid: int = 0) -> bytes:
    """A whole psample netlink message as the kernel multicasts it."""
    body = GENL_HDR.pack(CMD_SAMPLE, 1, 0) + build_attrs(sample)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), family_id, 0, seq, pid) + body
