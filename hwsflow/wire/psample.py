"""psample generic-netlink messages: decoding (and, for tests and the benchmark, building).

Pure code over bytes.  Attribute numbering and the kernel's emission order are
in REFERENCE section 1 and include/uapi/linux/psample.h.  Two decoders exist on
purpose: decode_sample() is the general, defensive parser; fast_decode() reads
the exact layout act_sample produces on current kernels (USUAL_FIXED, USUAL_FIELDS) and
returns None for anything else, so the caller falls back to the general parser.
Tests hold the two to identical results.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from hwsflow.wire.netlink import (
    Buffer,
    GENL_HDR,
    HEADERS_LEN,
    NLA_HDR,
    NLA_U16,
    NLA_U32,
    NLA_U64,
    NLMSG_HDR,
    MalformedMessage,
    attr,
    attr_fields,
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


# nested TUNNEL attributes (uapi enum psample_tunnel_key_attr)
TUNNEL_ID = 0
TUNNEL_IPV4_SRC = 1
TUNNEL_IPV4_DST = 2
TUNNEL_TOS = 3
TUNNEL_TTL = 4
TUNNEL_DONT_FRAGMENT = 5
TUNNEL_CSUM = 6
TUNNEL_OAM = 7
TUNNEL_GENEVE_OPTS = 8
TUNNEL_TP_SRC = 9
TUNNEL_TP_DST = 10
TUNNEL_VXLAN_OPTS = 11
TUNNEL_IPV6_SRC = 12
TUNNEL_IPV6_DST = 13
TUNNEL_PAD = 14
TUNNEL_ERSPAN_OPTS = 15
TUNNEL_IPV4_INFO_BRIDGE = 16

# fixed-size attributes: (attribute, wire struct, Sample field)
_SCALARS: dict[int, tuple[struct.Struct, str]] = {
    ATTR_IIFINDEX: (NLA_U16, "iif"),
    ATTR_OIFINDEX: (NLA_U16, "oif"),
    ATTR_ORIGSIZE: (NLA_U32, "orig_size"),
    ATTR_SAMPLE_GROUP: (NLA_U32, "group"),
    ATTR_GROUP_SEQ: (NLA_U32, "seq"),
    ATTR_SAMPLE_RATE: (NLA_U32, "raw_rate"),
    ATTR_GROUP_REFCOUNT: (NLA_U32, "refcount"),
    ATTR_OUT_TC: (NLA_U16, "out_tc"),
    ATTR_OUT_TC_OCC: (NLA_U64, "out_tc_occ"),
    ATTR_LATENCY: (NLA_U64, "latency"),
    ATTR_TIMESTAMP: (NLA_U64, "timestamp"),
    ATTR_PROTO: (NLA_U16, "proto"),
}


@dataclass(slots=True)
class TunnelKey:
    """psample's nested TUNNEL attribute: the tunnel key the sampled packet carries.

    After a metadata-mode tunnel device decapsulated it, the tunnel it arrived on (src is the remote
    end); at egress, the tunnel it is about to take.  None and False: the kernel sent no such
    attribute (it leaves out a zero TOS, zero ports, and absent addresses).  Addresses are in network
    order as sent; the id is the kernel's be64 tunnel id read as a number (a VXLAN or Geneve VNI).
    """

    id: int | None = None
    ipv4_src: bytes | None = None
    ipv4_dst: bytes | None = None
    ipv6_src: bytes | None = None
    ipv6_dst: bytes | None = None
    tos: int | None = None
    ttl: int | None = None
    tp_src: int | None = None  # outer UDP ports
    tp_dst: int | None = None
    dont_fragment: bool = False
    csum: bool = False
    oam: bool = False
    ipv4_info_bridge: bool = False
    geneve_opts: bytes | None = None
    vxlan_opts: bytes | None = None
    erspan_opts: bytes | None = None
    unknown: tuple[int, ...] = ()  # nested types skipped


_BE16 = struct.Struct(">H")
_BE64 = struct.Struct(">Q")
_U8 = struct.Struct("B")
# nested TUNNEL attributes: (TunnelKey field, wire struct; None for a flag, bytes for an opaque blob)
_TUNNEL_ATTRS: dict[int, tuple[str, struct.Struct | type[bytes] | None]] = {
    TUNNEL_ID: ("id", _BE64),
    TUNNEL_IPV4_SRC: ("ipv4_src", struct.Struct("4s")), TUNNEL_IPV4_DST: ("ipv4_dst", struct.Struct("4s")),
    TUNNEL_IPV6_SRC: ("ipv6_src", struct.Struct("16s")), TUNNEL_IPV6_DST: ("ipv6_dst", struct.Struct("16s")),
    TUNNEL_TOS: ("tos", _U8), TUNNEL_TTL: ("ttl", _U8),
    TUNNEL_TP_SRC: ("tp_src", _BE16), TUNNEL_TP_DST: ("tp_dst", _BE16),
    TUNNEL_DONT_FRAGMENT: ("dont_fragment", None), TUNNEL_CSUM: ("csum", None), TUNNEL_OAM: ("oam", None),
    TUNNEL_IPV4_INFO_BRIDGE: ("ipv4_info_bridge", None),
    TUNNEL_GENEVE_OPTS: ("geneve_opts", bytes), TUNNEL_VXLAN_OPTS: ("vxlan_opts", bytes),
    TUNNEL_ERSPAN_OPTS: ("erspan_opts", bytes),
}


def decode_tunnel(buf: Buffer, start: int, end: int) -> TunnelKey:
    """The nested attributes of TUNNEL in buf[start:end]; MalformedMessage for a short fixed-size one."""
    key = TunnelKey()
    unknown = []
    for nested, value_start, value_end in iter_attrs(buf, start, end):
        entry = _TUNNEL_ATTRS.get(nested)
        if entry is None:
            if nested != TUNNEL_PAD:
                unknown.append(nested)  # newer kernels may add attributes: skip, never fail
            continue
        name, wire = entry
        if wire is None:
            value: object = True
        elif wire is bytes:
            value = bytes(buf[value_start:value_end])
        else:
            assert isinstance(wire, struct.Struct)
            value = attr_fields(wire, buf, value_start, value_end, f"tunnel attribute {nested}")[0]
        setattr(key, name, value)
    if unknown:
        key.unknown = tuple(unknown)
    return key


def build_tunnel(key: TunnelKey) -> bytes:
    """The nested attributes of TUNNEL in the kernel's order of emission (__psample_ip_tun_to_nlattr)."""
    parts = []
    if key.id is not None:
        parts.append(attr(TUNNEL_ID, _BE64.pack(key.id)))
    if key.ipv4_info_bridge:
        parts.append(attr(TUNNEL_IPV4_INFO_BRIDGE, b""))
    for nested, address in ((TUNNEL_IPV4_SRC, key.ipv4_src), (TUNNEL_IPV4_DST, key.ipv4_dst),
                            (TUNNEL_IPV6_SRC, key.ipv6_src), (TUNNEL_IPV6_DST, key.ipv6_dst)):
        if address is not None:
            parts.append(attr(nested, address))
    for nested, octet in ((TUNNEL_TOS, key.tos), (TUNNEL_TTL, key.ttl)):
        if octet is not None:
            parts.append(attr(nested, _U8.pack(octet)))
    for nested, flag in ((TUNNEL_DONT_FRAGMENT, key.dont_fragment), (TUNNEL_CSUM, key.csum)):
        if flag:
            parts.append(attr(nested, b""))
    for nested, port in ((TUNNEL_TP_SRC, key.tp_src), (TUNNEL_TP_DST, key.tp_dst)):
        if port is not None:
            parts.append(attr(nested, _BE16.pack(port)))
    if key.oam:
        parts.append(attr(TUNNEL_OAM, b""))
    for nested, opts in ((TUNNEL_GENEVE_OPTS, key.geneve_opts), (TUNNEL_VXLAN_OPTS, key.vxlan_opts),
                         (TUNNEL_ERSPAN_OPTS, key.erspan_opts)):
        if opts is not None:
            parts.append(attr(nested, opts))
    return b"".join(parts)


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
    tunnel: TunnelKey | None = None
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


def decode_sample(buf: Buffer, offset: int = 0, end: int | None = None) -> Sample:
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


def _apply_attr(sample: Sample, attr_type: int, buf: Buffer, start: int, end: int) -> None:
    scalar = _SCALARS.get(attr_type)
    if scalar is not None:
        wire, name = scalar
        if end - start < wire.size:  # attr_fields' check, inline: this runs for every attribute of every sample
            raise MalformedMessage(f"attribute {attr_type} is {end - start} bytes, needs {wire.size}")
        setattr(sample, name, wire.unpack_from(buf, start)[0])
    elif attr_type == ATTR_DATA:
        sample.data = bytes(buf[start:end])
    elif attr_type == ATTR_USER_COOKIE:
        sample.cookie = bytes(buf[start:end])
    elif attr_type == ATTR_SAMPLE_PROBABILITY:
        sample.probability = True
    elif attr_type == ATTR_TUNNEL:
        sample.tunnel = decode_tunnel(buf, start, end)
    elif attr_type != ATTR_PAD:
        sample.unknown.append(attr_type)  # newer kernels may add attributes: skip, never fail


# ---------------------------------------------------------------- the usual layout

# The layout act_sample emits at ingress since 5.13 (REFERENCE section 1): IIFINDEX, SAMPLE_RATE,
# ORIGSIZE, SAMPLE_GROUP, GROUP_SEQ, TIMESTAMP, PROTO, then DATA, the last attribute.  Declared once, as
# byte offsets from the message's start (native byte order, as netlink's), for fast_decode and for the
# compiled loop (hwsflow/core/_fastpath.c), which takes it at start.
USUAL_SIZE = HEADERS_LEN + 8 + 8 + 8 + 8 + 8 + 12 + 8 + NLA_HDR.size  # where DATA's value starts: 84
USUAL_FAMILY = -1  # stands for the family id in USUAL_FIXED


def _nla_header(nla_len: int, nla_type: int) -> int:
    """An attribute header read as one native u32, as the checks compare it."""
    value: int = struct.unpack("=I", NLA_HDR.pack(nla_len, nla_type))[0]
    return value


# (offset, size, value) of everything the layout fixes: nlmsg_type, the command, each attribute header
# (nla_len and nla_type as one u32) up to DATA's type (its nla_len varies)
USUAL_FIXED: tuple[tuple[int, int, int], ...] = (
    (4, 2, USUAL_FAMILY), (16, 1, CMD_SAMPLE),
    (20, 4, _nla_header(NLA_HDR.size + 2, ATTR_IIFINDEX)),
    (28, 4, _nla_header(NLA_HDR.size + 4, ATTR_SAMPLE_RATE)),
    (36, 4, _nla_header(NLA_HDR.size + 4, ATTR_ORIGSIZE)),
    (44, 4, _nla_header(NLA_HDR.size + 4, ATTR_SAMPLE_GROUP)),
    (52, 4, _nla_header(NLA_HDR.size + 4, ATTR_GROUP_SEQ)),
    (60, 4, _nla_header(NLA_HDR.size + 8, ATTR_TIMESTAMP)),
    (72, 4, _nla_header(NLA_HDR.size + 2, ATTR_PROTO)),
    (82, 2, ATTR_DATA),
)
# name: (offset, size) of the values the fast paths read
USUAL_FIELDS: dict[str, tuple[int, int]] = {
    "length": (0, 4), "iif": (24, 2), "rate": (32, 4), "orig_size": (40, 4), "group": (48, 4), "seq": (56, 4),
    "data_nla_len": (USUAL_SIZE - NLA_HDR.size, 2),
}
_CODE = {1: "B", 2: "H", 4: "I"}


def _reader(places: list[tuple[int, int]]) -> struct.Struct:
    """One Struct reading native values of these (offset, size), in offset order, from a message's start."""
    fmt, at = "=", 0
    for offset, size in sorted(places):
        fmt += f"{offset - at}x{_CODE[size]}"
        at = offset + size
    return struct.Struct(fmt)


# the fixed fields and the values, each read by one unpack (USUAL_FIXED and USUAL_FIELDS are in offset order)
_USUAL_CHECK = _reader([(at, size) for at, size, _ in USUAL_FIXED])
_USUAL_CONSTANTS = tuple(value for _, _, value in USUAL_FIXED[1:])  # what follows the family id
assert USUAL_FIXED[0][2] == USUAL_FAMILY
_USUAL_VALUES = _reader(list(USUAL_FIELDS.values()))
assert [at for at, _, _ in USUAL_FIXED] == sorted(at for at, _, _ in USUAL_FIXED)
assert list(USUAL_FIELDS) == sorted(USUAL_FIELDS, key=lambda name: USUAL_FIELDS[name][0])


def usual_checks(family_id: int) -> tuple[tuple[int, int, int], ...]:
    """USUAL_FIXED with this family's id in place."""
    return tuple((at, size, family_id if value == USUAL_FAMILY else value) for at, size, value in USUAL_FIXED)


def usual_length(data_nla_len: int) -> int:
    """The length of a usual-layout message that DATA, the last attribute, ends exactly (padding included)."""
    return USUAL_SIZE - NLA_HDR.size + ((data_nla_len + 3) & ~3)


class UsualSample(NamedTuple):
    """What fast_decode reads from a message in the usual layout."""

    group: int
    seq: int
    rate: int
    orig_size: int
    iif: int
    data_start: int
    data_len: int
    end: int  # where the message ends in buf


def fast_decode(buf: Buffer, offset: int, end: int, family_id: int) -> UsualSample | None:
    """The sample of the message at buf[offset:end] if it has the usual layout, else None.

    None means "use decode_sample": anything unusual (egress with OIFINDEX, extra metadata, a cookie,
    probability, a tunnel, a short message) takes the general parser, which also handles every malformed
    case.  The compiled loop makes the same checks; tests hold both to the general parser.
    """
    if end - offset < USUAL_SIZE:
        return None
    fixed = _USUAL_CHECK.unpack_from(buf, offset)
    if fixed[0] != family_id or fixed[1:] != _USUAL_CONSTANTS:
        return None
    field = dict(zip(USUAL_FIELDS, _USUAL_VALUES.unpack_from(buf, offset)))
    nla_len, length = field["data_nla_len"], field["length"]
    if nla_len < NLA_HDR.size or length > end - offset or length != usual_length(nla_len):
        return None
    return UsualSample(field["group"], field["seq"], field["rate"], field["orig_size"], field["iif"],
                       offset + USUAL_SIZE, nla_len - NLA_HDR.size, offset + length)


# ---------------------------------------------------------------- building (tests, benchmark)


def build_attrs(sample: Sample) -> bytes:
    """Attributes in the kernel's order of emission (psample_sample_packet)."""
    parts: list[bytes] = []
    if sample.iif:
        parts.append(attr(ATTR_IIFINDEX, NLA_U16.pack(sample.iif)))
    if sample.oif:
        parts.append(attr(ATTR_OIFINDEX, NLA_U16.pack(sample.oif)))
    parts.append(attr(ATTR_SAMPLE_RATE, NLA_U32.pack(sample.raw_rate)))
    parts.append(attr(ATTR_ORIGSIZE, NLA_U32.pack(sample.orig_size)))
    parts.append(attr(ATTR_SAMPLE_GROUP, NLA_U32.pack(sample.group)))
    parts.append(attr(ATTR_GROUP_SEQ, NLA_U32.pack(sample.seq)))
    for attr_type, value, wire in (
        (ATTR_OUT_TC, sample.out_tc, NLA_U16),
        (ATTR_OUT_TC_OCC, sample.out_tc_occ, NLA_U64),
        (ATTR_LATENCY, sample.latency, NLA_U64),
        (ATTR_TIMESTAMP, sample.timestamp, NLA_U64),
        (ATTR_PROTO, sample.proto, NLA_U16),
    ):
        if value is not None:
            parts.append(attr(attr_type, wire.pack(value)))
    if sample.data:
        parts.append(attr(ATTR_DATA, sample.data))
    if sample.tunnel is not None:
        parts.append(attr(ATTR_TUNNEL, build_tunnel(sample.tunnel)))
    if sample.cookie:
        parts.append(attr(ATTR_USER_COOKIE, sample.cookie))
    if sample.probability:
        parts.append(attr(ATTR_SAMPLE_PROBABILITY, b""))
    return b"".join(parts)


def build_message(sample: Sample, family_id: int, seq: int = 0, pid: int = 0) -> bytes:
    """A whole psample netlink message as the kernel multicasts it."""
    body = GENL_HDR.pack(CMD_SAMPLE, 1, 0) + build_attrs(sample)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), family_id, 0, seq, pid) + body
