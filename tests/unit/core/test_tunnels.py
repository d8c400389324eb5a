"""Overlay traffic keeps its tunnel: psample's TUNNEL attribute -> the sFlow tunnel structures.

psample's nested attributes are decoded into a TunnelKey (checked against
bytes laid out by hand, as __psample_ip_tun_to_nlattr writes them), mapped to
0:1023..0:1026 and 0:1029/0:1030 by core.tunnels, and held to the construct
reference decoder field for field.  The pipeline tests show that these samples
leave the usual layout, so the compiled loop leaves them to the general parser,
and come out the same through every entry.  What tshark, sfcapd and
`hwsflow decode` make of them: tests/system/test_tunnels_interop.py.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsflow.core.groups import GroupTable
from hwsflow.core.model import DIRECTIONS, Direction
from hwsflow.core.pipeline import SamplePipeline
from hwsflow.core.tunnels import IPPROTO_UDP, VNI_MAX, tunnel_records
from hwsflow.wire import psample, sflow_ref
from hwsflow.wire.netlink import NLA_HDR, MalformedMessage, attr
from hwsflow.wire.sflow import DatagramBuilder, encode_tunnel_ip, encode_vni

FAMILY = 0x1C
IFINDEX = 7
V4_SRC, V4_DST = bytes((198, 51, 100, 1)), bytes((198, 51, 100, 2))
V6_SRC = ipaddress.ip_address("2001:db8::1").packed
V6_DST = ipaddress.ip_address("2001:db8::2").packed


def vxlan_key(**fields: object) -> psample.TunnelKey:
    """What a VXLAN device in metadata mode leaves on a decapsulated packet (IPv4 outer)."""
    base: dict = dict(id=100, ipv4_src=V4_SRC, ipv4_dst=V4_DST, ttl=64, tp_src=51000, tp_dst=4789)
    base.update(fields)
    return psample.TunnelKey(**base)


# ---------------------------------------------------------------- psample: the nested attributes


def nested(attr_type: int, value: bytes) -> bytes:
    return attr(attr_type, value)


def test_the_kernels_bytes_decode_to_the_key():
    """Laid out by hand as __psample_ip_tun_to_nlattr writes them: be64 id, addresses and be16 ports in network
    order, u8 tos and ttl, flags without a value."""
    raw = b"".join([
        nested(0, bytes.fromhex("0000000000abcdef")),  # ID
        nested(1, V4_SRC), nested(2, V4_DST),
        nested(3, b"\x28"), nested(4, b"\x40"),  # TOS, TTL
        nested(5, b""), nested(6, b""),  # DONT_FRAGMENT, CSUM
        nested(9, b"\xc7\x38"), nested(10, b"\x12\xb5"),  # TP_SRC 51000, TP_DST 4789
        nested(7, b""),  # OAM
        nested(8, b"\x01\x02\x03\x04\x05\x06\x07\x08"),  # GENEVE_OPTS
    ])
    key = psample.decode_tunnel(raw, 0, len(raw))
    assert key == psample.TunnelKey(id=0xABCDEF, ipv4_src=V4_SRC, ipv4_dst=V4_DST, tos=0x28, ttl=64,
                                    dont_fragment=True, csum=True, oam=True, tp_src=51000, tp_dst=4789,
                                    geneve_opts=bytes(range(1, 9)))
    assert psample.build_tunnel(key) == raw  # the same order when the tests build one


def test_ipv6_pad_bridge_and_unknown_nested_attributes():
    raw = (nested(14, b"") + nested(0, bytes(8)) + nested(16, b"") + nested(12, V6_SRC) + nested(13, V6_DST)
           + nested(4, b"\x01") + nested(15, b"\xee" * 4) + nested(40, b"future"))
    key = psample.decode_tunnel(raw, 0, len(raw))
    assert key == psample.TunnelKey(id=0, ipv4_info_bridge=True, ipv6_src=V6_SRC, ipv6_dst=V6_DST, ttl=1,
                                    erspan_opts=b"\xee" * 4, unknown=(40,))


@pytest.mark.parametrize("attr_type, size", [(0, 8), (1, 4), (2, 4), (3, 1), (4, 1), (9, 2), (10, 2), (12, 16),
                                             (13, 16)])
def test_a_short_fixed_size_nested_attribute_is_malformed(attr_type, size):
    raw = nested(attr_type, b"\x01" * (size - 1))
    with pytest.raises(MalformedMessage, match=f"tunnel attribute {attr_type} is {size - 1} bytes, needs {size}"):
        psample.decode_tunnel(raw, 0, len(raw))


def test_an_overlong_nested_attribute_reads_its_leading_bytes():
    raw = nested(10, b"\x12\xb5\xff\xff") + nested(1, V4_SRC + b"\xff")
    assert psample.decode_tunnel(raw, 0, len(raw)) == psample.TunnelKey(tp_dst=4789, ipv4_src=V4_SRC)


addresses4 = st.one_of(st.none(), st.binary(min_size=4, max_size=4))
addresses6 = st.one_of(st.none(), st.binary(min_size=16, max_size=16))


@st.composite
def tunnel_keys(draw: st.DrawFn) -> psample.TunnelKey:
    """Keys as the kernel sends them: one address family (or none); anything else optional."""
    family = draw(st.sampled_from([4, 6, None]))
    return psample.TunnelKey(
        id=draw(st.one_of(st.none(), st.integers(0, VNI_MAX), st.integers(VNI_MAX + 1, 2**64 - 1))),
        ipv4_src=draw(addresses4) if family == 4 else None, ipv4_dst=draw(addresses4) if family == 4 else None,
        ipv6_src=draw(addresses6) if family == 6 else None, ipv6_dst=draw(addresses6) if family == 6 else None,
        tos=draw(st.one_of(st.none(), st.integers(1, 255))), ttl=draw(st.one_of(st.none(), st.integers(0, 255))),
        tp_src=draw(st.one_of(st.none(), st.integers(1, 0xFFFF))), tp_dst=draw(st.one_of(st.none(), st.integers(1, 0xFFFF))),
        dont_fragment=draw(st.booleans()), csum=draw(st.booleans()), oam=draw(st.booleans()),
        ipv4_info_bridge=draw(st.booleans()), geneve_opts=draw(st.one_of(st.none(), st.binary(max_size=12))),
    )


@settings(max_examples=200, deadline=None)
@given(tunnel_keys())
def test_build_and_decode_agree(key):
    raw = psample.build_tunnel(key)
    assert psample.decode_tunnel(raw, 0, len(raw)) == key
    sample = psample.Sample(group=1, raw_rate=1, orig_size=60, data=bytes(60), tunnel=key)
    assert psample.decode_sample(psample.build_message(sample, FAMILY)).tunnel == key


# ---------------------------------------------------------------- the sFlow records


def parse_records(records: bytes, count: int) -> list[dict]:
    """The records as the reference decoder reads them, behind a raw packet header in one flow sample."""
    builder = DatagramBuilder("192.0.2.1")
    builder.add_flow_sample(1, 1, 0, IFINDEX, 1, 1, 0, IFINDEX, 0, 64, 4, bytes(60), records, count)
    builder.flush(1)
    (datagram,) = builder.take()
    (sample,) = sflow_ref.parse_datagram(datagram)["samples"]
    return sample["records"][1:]


def test_ingress_ipv4_vxlan():
    records = parse_records(*tunnel_records(vxlan_key(tos=0x28), ingress=True))
    assert records == [
        {"enterprise": 0, "format": 1024, "length": 32, "ip_length": 0, "protocol": IPPROTO_UDP,
         "src_ip": "198.51.100.1", "dst_ip": "198.51.100.2", "src_port": 51000, "dst_port": 4789, "tcp_flags": 0,
         "tos": 0x28},
        {"enterprise": 0, "format": 1030, "length": 4, "vni": 100},
    ]


def test_egress_ipv6_geneve():
    key = psample.TunnelKey(id=0xFFFFFF, ipv6_src=V6_SRC, ipv6_dst=V6_DST, ttl=64, tp_dst=6081,
                            geneve_opts=b"\0" * 8)
    records = parse_records(*tunnel_records(key, ingress=False))
    assert records == [
        {"enterprise": 0, "format": 1025, "length": 56, "ip_length": 0, "protocol": IPPROTO_UDP,
         "src_ip": "2001:db8::1", "dst_ip": "2001:db8::2", "src_port": 0, "dst_port": 6081, "tcp_flags": 0,
         "priority": 0},
        {"enterprise": 0, "format": 1029, "length": 4, "vni": 0xFFFFFF},
    ]


def test_what_the_key_lacks_is_zero_never_invented():
    # no ports: not known to be UDP; no TOS; a missing source address
    records = parse_records(*tunnel_records(psample.TunnelKey(id=5, ipv4_dst=V4_DST, ttl=3), ingress=True))
    assert records[0] == {"enterprise": 0, "format": 1024, "length": 32, "ip_length": 0, "protocol": 0,
                          "src_ip": "0.0.0.0", "dst_ip": "198.51.100.2", "src_port": 0, "dst_port": 0,
                          "tcp_flags": 0, "tos": 0}


@pytest.mark.parametrize("key, formats", [
    (psample.TunnelKey(ttl=64), []),  # nothing to say
    (psample.TunnelKey(id=7, ttl=64), [1030]),  # no address: the VNI alone
    (vxlan_key(id=None), [1024]),  # no id (a keyless tunnel)
    (vxlan_key(id=VNI_MAX + 1), [1024]),  # an id wider than a VNI (a GRE key) is no VNI
    (vxlan_key(id=0), [1024, 1030]),  # VNI 0 is a VNI
    (psample.TunnelKey(id=1, ipv6_dst=V6_DST), [1026, 1030]),
])
def test_which_records_a_key_makes(key, formats):
    records, count = tunnel_records(key, ingress=True)
    assert count == len(formats)
    assert [r["format"] for r in parse_records(records, count)] == formats


def test_a_key_with_both_families_makes_one_address_record():
    """The kernel sends one family; a message naming both still makes a sample of bounded size."""
    key = vxlan_key(ipv6_src=V6_SRC, ipv6_dst=V6_DST)
    assert [r["format"] for r in parse_records(*tunnel_records(key, ingress=True))] == [1024, 1030]


def expected_records(key: psample.TunnelKey, ingress: bool) -> list[dict]:
    """The records a key should make, from the rules stated plainly (core.tunnels states them for speed)."""
    out = []
    v4 = key.ipv4_src is not None or key.ipv4_dst is not None
    v6 = key.ipv6_src is not None or key.ipv6_dst is not None
    if v4 or v6:
        size = 4 if v4 else 16
        src, dst = (key.ipv4_src, key.ipv4_dst) if v4 else (key.ipv6_src, key.ipv6_dst)
        record = {"enterprise": 0, "format": (1024 if v4 else 1026) - (0 if ingress else 1),
                  "length": 32 if v4 else 56, "ip_length": 0,
                  "protocol": 17 if key.tp_src or key.tp_dst else 0,
                  "src_ip": str(ipaddress.ip_address(src or bytes(size))),
                  "dst_ip": str(ipaddress.ip_address(dst or bytes(size))),
                  "src_port": key.tp_src or 0, "dst_port": key.tp_dst or 0, "tcp_flags": 0}
        record["tos" if v4 else "priority"] = key.tos or 0
        out.append(record)
    if key.id is not None and key.id < 1 << 24:
        out.append({"enterprise": 0, "format": 1030 if ingress else 1029, "length": 4, "vni": key.id})
    return out


@settings(max_examples=300, deadline=None)  # construct is slow, and the machine may be busy
@given(tunnel_keys(), st.booleans())
def test_encoder_and_reference_decoder_agree_field_for_field(key, ingress):
    records, count = tunnel_records(key, ingress)
    assert parse_records(records, count) == expected_records(key, ingress)
    # and byte for byte: the reference decoder builds the same records
    built = b"".join(sflow_ref.FlowRecord.build({"format": r["format"], "data": {
        k: (ipaddress.ip_address(v).packed if k in ("src_ip", "dst_ip") else v)
        for k, v in r.items() if k not in ("enterprise", "format", "length")}})
        for r in expected_records(key, ingress))
    assert records == built


def test_the_address_encoder_refuses_mixed_or_odd_sizes():
    with pytest.raises(ValueError, match="4 or 16"):
        encode_tunnel_ip(True, 0, 17, V4_SRC, V6_DST, 1, 2, 0, 0)
    with pytest.raises(ValueError, match="4 or 16"):
        encode_tunnel_ip(True, 0, 17, b"\0" * 5, b"\0" * 5, 1, 2, 0, 0)
    assert encode_vni(False, 2**32 + 9) == struct.pack("!III", 1029, 4, 9)


@pytest.mark.parametrize("fmt", [1023, 1026, 1027, 1030])
def test_a_tunnel_record_of_the_wrong_length_is_malformed(fmt):
    body = {1023: 28, 1026: 60, 1027: 8, 1030: 0}[fmt]  # one word short or long of each structure
    builder = DatagramBuilder("192.0.2.1")
    builder.add_flow_sample(1, 1, 0, IFINDEX, 1, 1, 0, IFINDEX, 0, 64, 4, bytes(60),
                            struct.pack("!II", fmt, body) + bytes(body), 1)
    builder.flush(1)
    with pytest.raises(ValueError, match="records"):
        sflow_ref.parse_datagram(builder.take()[0])


# ---------------------------------------------------------------- the pipeline


def pipeline(direction: Direction = "ingress", compiled: bool | None = False) -> SamplePipeline:
    groups = GroupTable(1000)
    groups.bind(IFINDEX, "vxlan0", direction, 1, 128)
    return SamplePipeline(DatagramBuilder("192.0.2.1"), groups, FAMILY, compiled)


PATHS = pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])


def kernel_sample(seq: int, **fields: object) -> psample.Sample:
    """act_sample's usual ingress layout (5.13+); with a tunnel key, TUNNEL follows DATA."""
    base: dict = dict(group=1000, seq=seq, raw_rate=1, orig_size=98, iif=IFINDEX, data=bytes(range(98)),
                      timestamp=5, proto=0x0800)
    base.update(fields)
    return psample.Sample(**base)


def test_a_tunnel_sample_leaves_the_fast_layout():
    msg = psample.build_message(kernel_sample(1, tunnel=vxlan_key()), FAMILY)
    assert NLA_HDR.unpack_from(msg, psample.USUAL_SIZE - NLA_HDR.size)[1] == psample.ATTR_DATA  # DATA where the fast layout has it...
    assert psample.fast_decode(msg, 0, len(msg), FAMILY) is None  # ...but TUNNEL after it: declined


def slots(messages: list[bytes], stride: int = 512) -> tuple[bytearray, list[int]]:
    """The messages as recvmmsg leaves them: one per slot, stride bytes apart."""
    buf = bytearray(stride * len(messages))
    for i, msg in enumerate(messages):
        buf[i * stride:i * stride + len(msg)] = msg
    return buf, [len(m) for m in messages]


@pytest.mark.parametrize("direction, formats", [("ingress", [1, 1024, 1030]), ("egress", [1, 1023, 1029])])
@PATHS
def test_tunnel_samples_go_the_general_way_among_plain_ones(compiled, direction, formats):
    """A chunk of plain samples with tunnel samples between them: the compiled loop packs the plain ones and
    leaves the tunnel ones to the general parser, in order, with the structures of the group's direction."""
    tunnels = {2: vxlan_key(id=200), 5: vxlan_key(id=500, ipv4_src=bytes((203, 0, 113, 5)))}
    oif = {"oif": IFINDEX} if direction == "egress" else {}
    msgs = [psample.build_message(kernel_sample(i, tunnel=tunnels.get(i), **oif), FAMILY) for i in range(8)]
    fed = pipeline(direction, compiled)
    fed.feed_slots(*slots(msgs), stride=512, uptime_ms=9)
    fed.flush(9)
    decoded = pipeline(direction)
    for msg in msgs:
        decoded.stats.messages += 1
        decoded.add_sample(psample.decode_sample(msg), 9)
    decoded.flush(9)
    datagrams = fed.take()
    assert datagrams == decoded.take()
    assert fed.stats == decoded.stats and fed.stats.samples == 8
    assert fed.stats.compiled == (6 if compiled and direction == "ingress" else 0)  # egress is never compiled
    samples = [s for d in datagrams for s in sflow_ref.parse_datagram(d)["samples"]]
    assert [s["sequence_number"] for s in samples] == list(range(1, 9))
    for i, s in enumerate(samples):
        assert [r["format"] for r in s["records"]] == (formats if i in tunnels else [1])
    assert samples[5]["records"][1]["src_ip"] == "203.0.113.5" and samples[5]["records"][2]["vni"] == 500


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), tunnel_keys()), min_size=1, max_size=40), st.sampled_from(DIRECTIONS))
@PATHS
def test_feed_slots_and_the_general_path_agree_on_any_mix(compiled, keys, direction):
    """Plain and tunnel samples in any order and number: the same datagrams and state through recvmmsg-like
    slots as through the general parser one by one; only the plain ones packed by the compiled loop."""
    oif = {"oif": IFINDEX} if direction == "egress" else {}
    msgs = [psample.build_message(kernel_sample(i, tunnel=key, **oif), FAMILY) for i, key in enumerate(keys)]
    fed, decoded = pipeline(direction, compiled), pipeline(direction)
    fed.feed_slots(*slots(msgs), stride=512, uptime_ms=3)
    for msg in msgs:
        decoded.stats.messages += 1
        decoded.add_sample(psample.decode_sample(msg), 3)
    fed.flush(3)
    decoded.flush(3)
    assert fed.take() == decoded.take()
    assert fed.stats == decoded.stats
    plain = sum(key is None for key in keys)
    assert fed.stats.compiled == (plain if compiled and direction == "ingress" else 0)


def test_tunnel_and_queue_records_together():
    msg = psample.build_message(kernel_sample(0, tunnel=vxlan_key(), out_tc=3), FAMILY)
    fed = pipeline()
    fed.feed(msg, len(msg), 1)
    fed.flush(1)
    (sample,) = sflow_ref.parse_datagram(fed.take()[0])["samples"]
    assert [r["format"] for r in sample["records"]] == [1, 1024, 1030, 1036]


def test_the_largest_tunnel_sample_fits_the_configured_room():
    """config.SAMPLE_ROOM's promise holds with every record at once: an IPv6 agent, expanded, IPv6 outer, a VNI
    and the three queue records."""
    from hwsflow.core.config import SAMPLE_ROOM

    groups = GroupTable(1000)
    groups.bind(0xFFFFFFFF, "p0", "ingress", 1, 1024)
    fed = SamplePipeline(DatagramBuilder("2001:db8::1", max_size=1024 + SAMPLE_ROOM, expanded=True), groups, FAMILY)
    key = psample.TunnelKey(id=1, ipv6_src=V6_SRC, ipv6_dst=V6_DST, tos=1, tp_src=1, tp_dst=2)
    msg = psample.build_message(kernel_sample(0, data=bytes(1024), orig_size=9000, tunnel=key, out_tc=1,
                                              out_tc_occ=2, latency=3), FAMILY)
    fed.feed(msg, len(msg), 1)
    fed.flush(1)
    (sample,) = sflow_ref.parse_datagram(fed.take()[0])["samples"]
    assert sample["records"][0]["header_length"] == 1024
    assert [r["format"] for r in sample["records"]] == [1, 1026, 1030, 1036, 1040, 1039]
