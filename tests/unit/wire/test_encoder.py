"""The fast encoder against the construct reference (hwsflow.wire.sflow_ref).

Two independent statements of the wire format: the encoder packs with
hand-laid structs, sflow_ref declares the layout. They must agree byte for
byte and field for field.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsflow.wire import sflow_ref
from hwsflow.wire.sflow import (
    DatagramBuilder,
    encode_ethernet_counters,
    encode_if_counters,
    encode_port_name,
    encode_queue_records,
)
from hwsflow.core.model import U32_MAX as U32
from hwsflow.wire.sflow_ref import format_datagram, parse_datagram

V4_HEADER = 28  # datagram header bytes with an IPv4 agent address
V6_HEADER = 40
FLOW_COMPACT_FIXED = 64  # sample and raw-header record, before header bytes
FLOW_EXPANDED_FIXED = 76


def flow_args(**overrides: Any) -> dict[str, Any]:
    args = dict(
        uptime_ms=1000, seq=1, source_type=0, source_index=3, rate=100, pool=500,
        drops=0, input_if=3, output_if=0, frame_length=98, stripped=4,
        header=bytes(range(64)),
    )  # fmt: skip
    args.update(overrides)
    return args


def one_datagram(builder: DatagramBuilder, uptime_ms: int = 2000) -> bytes:
    builder.flush(uptime_ms)
    (dgram,) = builder.take()
    return dgram


def construct_flow(a: dict[str, Any], expanded: bool) -> dict[str, Any]:
    """The same flow sample as add_flow_sample(**a), for sflow_ref.Datagram.build."""
    return {
        "format": 3 if expanded else 1,
        "data": {
            "sequence_number": a["seq"] & U32,
            "source_id": {"type": a["source_type"], "index": a["source_index"]},
            "sampling_rate": a["rate"],
            "sample_pool": a["pool"] & U32,
            "drops": a["drops"] & U32,
            "input": {"format": 0, "value": a["input_if"]},
            "output": {"format": 0, "value": a["output_if"]},
            "records": [
                {
                    "format": 1,
                    "data": {
                        "header_protocol": 1,
                        "frame_length": a["frame_length"],
                        "stripped": a["stripped"],
                        "header": bytes(a["header"]),
                    },
                }
            ],
        },
    }


def construct_datagram(agent: str, seq: int, uptime: int, samples: list[dict[str, Any]]) -> bytes:
    addr = ipaddress.ip_address(agent)
    return sflow_ref.Datagram.build(
        {
            "agent_address": {"type": 1 if addr.version == 4 else 2, "address": addr.packed},
            "sub_agent_id": 0,
            "sequence_number": seq,
            "uptime": uptime,
            "samples": samples,
        }
    )


def assert_flow_matches(sample: dict[str, Any], a: dict[str, Any], expanded: bool) -> None:
    assert sample["kind"] == "flow"
    assert sample["format"] == (3 if expanded else 1)
    assert sample["expanded"] is expanded
    assert sample["sequence_number"] == a["seq"] & U32
    assert (sample["source_id_type"], sample["source_id_index"]) == (a["source_type"], a["source_index"])
    assert sample["sampling_rate"] == a["rate"]
    assert sample["sample_pool"] == a["pool"] & U32
    assert sample["drops"] == a["drops"] & U32
    assert (sample["input_format"], sample["input"]) == (0, a["input_if"])
    assert (sample["output_format"], sample["output"]) == (0, a["output_if"])
    record = sample["records"][0]
    assert (record["enterprise"], record["format"], record["header_protocol"]) == (0, 1, 1)
    assert record["frame_length"] == a["frame_length"]
    assert record["stripped"] == a["stripped"]
    assert record["header_length"] == len(a["header"])
    assert record["header"] == bytes(a["header"])
    padded = len(a["header"]) + (-len(a["header"]) % 4)
    assert record["length"] == 16 + padded
    assert sample["length"] == (44 if expanded else 32) + 8 + record["length"]


# --- flow samples -----------------------------------------------------------


@pytest.mark.parametrize("agent", ["192.0.2.1", "2001:db8::7"])
@pytest.mark.parametrize(
    "overrides, expanded",
    [
        ({}, False),
        ({"source_index": 0xFFFFFF, "input_if": 0x3FFFFFFF, "output_if": 0x3FFFFFFF}, False),
        ({"source_index": 0x1000000}, True),
        ({"input_if": 0x40000000}, True),
        ({"output_if": 0xFFFFFFFF}, True),
        ({"source_type": 2, "source_index": 5}, False),
    ],
)
def test_flow_sample_fields_and_bytes(agent: str, overrides: dict[str, Any], expanded: bool) -> None:
    a = flow_args(**overrides)
    builder = DatagramBuilder(agent)
    builder.add_flow_sample(**a)
    dgram = one_datagram(builder, uptime_ms=2000)

    d = parse_datagram(dgram)
    assert d["agent_address"] == agent
    assert d["agent_address_type"] == (1 if "." in agent else 2)
    assert (d["version"], d["sub_agent_id"], d["sequence_number"], d["uptime"]) == (5, 0, 1, 2000)
    assert len(d["samples"]) == 1
    assert_flow_matches(d["samples"][0], a, expanded)
    assert dgram == construct_datagram(agent, 1, 2000, [construct_flow(a, expanded)])


def test_expanded_flag_forces_expanded_encoding() -> None:
    a = flow_args()
    builder = DatagramBuilder("192.0.2.1", expanded=True)
    builder.add_flow_sample(**a)
    sample = parse_datagram(one_datagram(builder))["samples"][0]
    assert_flow_matches(sample, a, expanded=True)


@pytest.mark.parametrize("hlen", [0, 1, 2, 3, 4, 5, 6, 7, 60, 61, 62, 63, 128])
def test_header_padding(hlen: int) -> None:
    builder = DatagramBuilder("192.0.2.1")
    # A longer 0xff header first: the reused buffer must not leak into padding.
    builder.add_flow_sample(**flow_args(header=b"\xff" * 200))
    builder.flush(1)
    builder.take()
    a = flow_args(header=bytes(range(1, hlen + 1)))
    builder.add_flow_sample(**a)
    dgram = one_datagram(builder)
    assert len(dgram) % 4 == 0
    assert dgram.endswith(a["header"] + b"\0" * (-hlen % 4))
    assert_flow_matches(parse_datagram(dgram)["samples"][0], a, expanded=False)
    assert dgram == construct_datagram("192.0.2.1", 2, 2000, [construct_flow(a, False)])


def test_memoryview_header() -> None:
    data = bytes(range(100))
    builder = DatagramBuilder("192.0.2.1")
    builder.add_flow_sample(**flow_args(header=memoryview(data)[10:50]))
    record = parse_datagram(one_datagram(builder))["samples"][0]["records"][0]
    assert record["header"] == data[10:50]


def test_32bit_fields_wrap() -> None:
    builder = DatagramBuilder("192.0.2.1")
    a = flow_args(seq=2**32 + 5, pool=2**33 + 7, drops=2**32)
    builder.add_flow_sample(**a)
    builder.add_counter_sample(0, 2**32 + 9, 0, 3, b"", 0)
    d = parse_datagram(one_datagram(builder, uptime_ms=2**32 + 10))
    flow, counters = d["samples"]
    assert (flow["sequence_number"], flow["sample_pool"], flow["drops"]) == (5, 7, 0)
    assert counters["sequence_number"] == 9
    assert d["uptime"] == 10


def test_datagram_sequence_wraps() -> None:
    builder = DatagramBuilder("192.0.2.1")
    builder.sequence = U32
    for uptime in (1, 2):
        builder.add_flow_sample(**flow_args())
        builder.flush(uptime)
    assert [parse_datagram(x)["sequence_number"] for x in builder.take()] == [U32, 0]
    assert builder.sequence == 1


def test_extra_records_are_appended_and_counted() -> None:
    switch = bytes.fromhex("000003e9 00000010 0000000a 00000000 00000014 00000000")
    builder = DatagramBuilder("192.0.2.1")
    builder.add_flow_sample(**flow_args(extra_records=switch, extra_count=1))
    sample = parse_datagram(one_datagram(builder))["samples"][0]
    header, extended = sample["records"]
    assert header["header_length"] == 64
    assert (extended["format"], extended["length"]) == (1001, 16)
    assert extended["data"] == switch[8:]  # unknown to sflow_ref: kept opaque
    assert sample["length"] == 32 + 8 + 80 + len(switch)


# --- psample queue metadata: the transit delay and queue extension ------------------


def test_queue_records_bytes() -> None:
    records, count = encode_queue_records(7, 1500, 25_000)
    assert count == 3
    assert records == bytes.fromhex(
        "0000040c 00000004 00000007"  # 0:1036 egress queue 7
        "00000410 00000004 000005dc"  # 0:1040 queue depth 1500 bytes
        "0000040f 00000004 000061a8"  # 0:1039 transit delay 25000 ns
    )


@pytest.mark.parametrize("supplied", [(3, None, None), (None, 9, None), (None, None, 11), (None, 9, 11)])
def test_queue_records_only_for_what_the_kernel_supplied(supplied: tuple) -> None:
    records, count = encode_queue_records(*supplied)
    assert count == len(records) // 12 == sum(v is not None for v in supplied)


def test_queue_records_saturate_at_32_bits() -> None:
    records, _ = encode_queue_records(0, 2**40, 2**32)
    assert records[12:] == bytes.fromhex("00000410 00000004 ffffffff 0000040f 00000004 ffffffff")
    assert encode_queue_records(None, U32 - 1, None)[0][8:] == (U32 - 1).to_bytes(4, "big")
    assert encode_queue_records(None, None, None) == (b"", 0)


def test_queue_records_decode_in_the_reference_and_in_text() -> None:
    builder = DatagramBuilder("192.0.2.1")
    extra, count = encode_queue_records(2, 2**33, 900)
    builder.add_flow_sample(**flow_args(extra_records=extra, extra_count=count))
    d = parse_datagram(one_datagram(builder))
    (sample,) = d["samples"]
    assert [(r["format"], r["length"]) for r in sample["records"][1:]] == [(1036, 4), (1040, 4), (1039, 4)]
    assert (sample["records"][1]["queue"], sample["records"][2]["depth"], sample["records"][3]["delay"]) == (
        2, U32, 900)
    assert sample["length"] == 32 + 8 + 80 + 36
    assert "queue=2 depth=4294967295B delay=900ns" in format_datagram(d)


def test_queue_record_of_the_wrong_length_is_malformed() -> None:
    builder = DatagramBuilder("192.0.2.1")
    # a 1036 record declaring 8 bytes: the reference decoder must refuse it, not read half
    builder.add_flow_sample(**flow_args(extra_records=bytes.fromhex("0000040c 00000008 00000001 00000002"),
                                        extra_count=1))
    with pytest.raises(ValueError, match="records"):
        parse_datagram(one_datagram(builder))


# --- counter samples and records ----------------------------------------------


def if_counter_values() -> list[int]:
    return [
        7, 6, 25_000_000_000, 1, 3, 2**40 + 1, 11, 12, 13, 14, 15, 16,
        2**41 + 2, 21, 22, 23, 24, 25, 0,
    ]  # fmt: skip


def counter_records() -> bytes:
    return (
        encode_if_counters(*if_counter_values())
        + encode_ethernet_counters(*range(100, 113))
        + encode_port_name("eth0")
    )


@pytest.mark.parametrize(
    "source_index, forced, expanded",
    [(7, False, False), (0xFFFFFF, False, False), (0x1000000, False, True), (7, True, True)],
)
def test_counter_sample_fields(source_index: int, forced: bool, expanded: bool) -> None:
    builder = DatagramBuilder("2001:db8::1", sub_agent_id=9, expanded=forced)
    builder.add_counter_sample(500, 42, 0, source_index, counter_records(), 3)
    d = parse_datagram(one_datagram(builder))
    assert d["sub_agent_id"] == 9
    (sample,) = d["samples"]
    assert sample["kind"] == "counters"
    assert sample["format"] == (4 if expanded else 2)
    assert (sample["sequence_number"], sample["source_id_index"]) == (42, source_index)
    assert sample["length"] == (16 if expanded else 12) + 96 + 60 + 16
    ifc, eth, name = sample["records"]
    names = [
        "ifIndex", "ifType", "ifSpeed", "ifDirection", "ifStatus", "ifInOctets",
        "ifInUcastPkts", "ifInMulticastPkts", "ifInBroadcastPkts", "ifInDiscards",
        "ifInErrors", "ifInUnknownProtos", "ifOutOctets", "ifOutUcastPkts",
        "ifOutMulticastPkts", "ifOutBroadcastPkts", "ifOutDiscards", "ifOutErrors",
        "ifPromiscuousMode",
    ]  # fmt: skip
    assert (ifc["format"], ifc["length"]) == (1, 88)
    assert [ifc[n] for n in names] == if_counter_values()
    assert (eth["format"], eth["length"]) == (2, 52)
    assert [eth[n] for n in sflow_ref.ETHERNET_COUNTER_NAMES] == list(range(100, 113))
    assert (name["format"], name["length"], name["name"]) == (1005, 8, "eth0")


def test_if_counters_32bit_fields_wrap() -> None:
    values = if_counter_values()
    values[6] = 2**32 + 3  # ifInUcastPkts from a 64-bit kernel counter
    values[5] = 2**64 + 4  # ifInOctets
    record = encode_if_counters(*values)
    assert len(record) == 8 + 88
    builder = DatagramBuilder("192.0.2.1")
    builder.add_counter_sample(0, 1, 0, 1, record, 1)
    ifc = parse_datagram(one_datagram(builder))["samples"][0]["records"][0]
    assert (ifc["ifInUcastPkts"], ifc["ifInOctets"]) == (3, 4)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("", ""),
        ("a", "a"),
        ("ab", "ab"),
        ("abc", "abc"),
        ("abcd", "abcd"),
        ("x" * 300, "x" * 255),
        ("é" * 200, "é" * 127),  # 255 bytes would split a 2-byte character
    ],
)
def test_port_name(name: str, expected: str) -> None:
    record = encode_port_name(name)
    assert len(record) % 4 == 0
    builder = DatagramBuilder("192.0.2.1")
    builder.add_counter_sample(0, 1, 0, 1, record, 1)
    parsed = parse_datagram(one_datagram(builder))["samples"][0]["records"][0]
    assert parsed["name"] == expected
    assert parsed["length"] == len(record) - 8


# --- packing into datagrams -------------------------------------------------------


def test_max_size_packing() -> None:
    builder = DatagramBuilder("192.0.2.1", max_size=1400)
    per_sample = FLOW_COMPACT_FIXED + 128
    per_datagram = (1400 - V4_HEADER) // per_sample  # 7
    for i in range(20):
        builder.add_flow_sample(**flow_args(uptime_ms=100 + i, seq=i, header=bytes(128)))
    assert builder.pending == 20 - 2 * per_datagram
    builder.flush(999)
    assert builder.pending == 0
    datagrams = builder.take()
    assert builder.take() == []
    parsed = [parse_datagram(x) for x in datagrams]
    assert [len(d["samples"]) for d in parsed] == [7, 7, 6]
    assert [d["sequence_number"] for d in parsed] == [1, 2, 3]
    assert builder.sequence == 4
    # A datagram carries the uptime of the call that finished it.
    assert [d["uptime"] for d in parsed] == [107, 114, 999]
    seqs = [s["sequence_number"] for d in parsed for s in d["samples"]]
    assert seqs == list(range(20))
    assert all(len(x) == V4_HEADER + len(d["samples"]) * per_sample for x, d in zip(datagrams, parsed))
    assert all(len(x) <= 1400 for x in datagrams)


def test_flush_without_samples_makes_nothing() -> None:
    builder = DatagramBuilder("192.0.2.1")
    builder.flush(5)
    assert builder.take() == []
    assert builder.sequence == 1


def test_oversized_sample_is_truncated_to_fit() -> None:
    builder = DatagramBuilder("2001:db8::1", max_size=300)
    builder.add_flow_sample(**flow_args(seq=1, header=bytes(16)))
    builder.add_flow_sample(**flow_args(seq=2, header=bytes(range(256)) * 4, frame_length=1500))
    builder.flush(3)
    first, second = builder.take()
    assert parse_datagram(first)["samples"][0]["sequence_number"] == 1
    assert len(second) <= 300
    record = parse_datagram(second)["samples"][0]["records"][0]
    room = (300 - V6_HEADER - FLOW_COMPACT_FIXED) & ~3
    assert record["header_length"] == room
    assert record["header"] == (bytes(range(256)) * 4)[:room]
    assert record["frame_length"] == 1500  # the original length is kept


def test_impossible_sizes_raise() -> None:
    with pytest.raises(ValueError):
        DatagramBuilder("192.0.2.1", max_size=50)
    builder = DatagramBuilder("192.0.2.1", max_size=200)
    with pytest.raises(ValueError):
        builder.add_counter_sample(0, 1, 0, 1, bytes(400), 1)
    with pytest.raises(ValueError):
        builder.add_flow_sample(**flow_args(extra_records=bytes(400), extra_count=1))


@pytest.mark.parametrize("agent", ["", "192.0.2", "not-an-address", "2001:db8::g"])
def test_bad_agent_address(agent: str) -> None:
    with pytest.raises(ValueError):
        DatagramBuilder(agent)


# --- property tests ---------------------------------------------------------------

u32 = st.integers(0, U32)
big = st.integers(0, 2**40)  # fields the encoder must wrap
flow_strategy = st.fixed_dictionaries(
    {
        "uptime_ms": big,
        "seq": big,
        "source_type": st.integers(0, 3),
        "source_index": st.one_of(st.integers(0, 0xFFFFFF), u32),
        "rate": u32,
        "pool": big,
        "drops": big,
        "input_if": st.one_of(st.integers(0, 0x3FFFFFFF), u32),
        "output_if": st.one_of(st.integers(0, 0x3FFFFFFF), u32),
        "frame_length": u32,
        "stripped": u32,
        "header": st.binary(max_size=300),
    }
)
counter_strategy = st.fixed_dictionaries(
    {
        "uptime_ms": big,
        "seq": big,
        "source_type": st.integers(0, 3),
        "source_index": u32,
        "name": st.text(max_size=20),
    }
)


def needs_expanded(a: dict[str, Any]) -> bool:
    return a["source_index"] > 0xFFFFFF or a.get("input_if", 0) > 0x3FFFFFFF or a.get("output_if", 0) > 0x3FFFFFFF


@settings(max_examples=150, deadline=None)
@given(
    agent=st.sampled_from(["192.0.2.1", "2001:db8::1"]),
    max_size=st.integers(200, 1500),
    samples=st.lists(st.one_of(flow_strategy, counter_strategy), min_size=1, max_size=25),
    forced=st.booleans(),
)
def test_random_samples_round_trip(agent: str, max_size: int, samples: list[dict[str, Any]], forced: bool) -> None:
    builder = DatagramBuilder(agent, max_size=max_size, expanded=forced)
    for a in samples:
        if "header" in a:
            builder.add_flow_sample(**a)
        else:
            records = encode_port_name(a["name"])
            builder.add_counter_sample(a["uptime_ms"], a["seq"], a["source_type"], a["source_index"], records, 1)
    builder.flush(samples[-1]["uptime_ms"])
    datagrams = builder.take()
    assert all(len(x) <= max_size for x in datagrams)
    parsed = [parse_datagram(x) for x in datagrams]
    assert [d["sequence_number"] for d in parsed] == list(range(1, len(datagrams) + 1))
    assert all(d["samples"] for d in parsed)
    decoded = [s for d in parsed for s in d["samples"]]
    assert len(decoded) == len(samples)
    for a, s in zip(samples, decoded):
        expanded = forced or needs_expanded(a)
        assert s["expanded"] is expanded
        assert s["sequence_number"] == a["seq"] & U32
        assert s["source_id_index"] == a["source_index"]
        if "header" in a:
            record = s["records"][0]
            # Only a sample too big for max_size on its own loses header bytes.
            assert bytes(a["header"]).startswith(record["header"])
            if record["header_length"] < len(a["header"]):
                header_room = max_size - (V4_HEADER if "." in agent else V6_HEADER)
                header_room -= FLOW_EXPANDED_FIXED if expanded else FLOW_COMPACT_FIXED
                assert record["header_length"] == header_room & ~3
            a = {**a, "header": record["header"]}
            assert_flow_matches(s, a, expanded)
        else:
            assert s["records"][0]["name"] == a["name"]


# --- the reference decoder on bad input ------------------------------------------


def sample_datagram() -> bytes:
    builder = DatagramBuilder("192.0.2.1")
    builder.add_flow_sample(**flow_args())
    builder.add_counter_sample(0, 1, 0, 1, counter_records(), 3)
    return one_datagram(builder)


def test_unknown_sample_kept_opaque() -> None:
    good = bytearray(sample_datagram())
    good[V4_HEADER : V4_HEADER + 4] = (5).to_bytes(4, "big")  # flow sample -> format 5
    sample = parse_datagram(bytes(good))["samples"][0]
    assert (sample["kind"], sample["format"], sample["length"]) == ("unknown", 5, 32 + 8 + 80)
    assert len(sample["data"]) == sample["length"]


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda b: b[:-3], "samples"),  # cut short
        (lambda b: b + b"\0\0\0\0", "left over"),
        (lambda b: (6).to_bytes(4, "big") + b[4:], "version 6"),
        (lambda b: b[:4] + (3).to_bytes(4, "big") + b[8:], "agent_address"),  # address type
        (lambda b: b[:32] + (120 + 4).to_bytes(4, "big") + b[36:], "samples"),  # sample length
        (lambda b: b[:72] + (80 - 4).to_bytes(4, "big") + b[76:], "records"),  # record length
        (lambda b: b"", "version|stream"),
    ],
)
def test_malformed_input_raises_value_error(mutate: Any, words: str) -> None:
    data = mutate(sample_datagram())
    with pytest.raises(ValueError) as info:
        parse_datagram(data)
    assert re.search(words, str(info.value)), str(info.value)


def test_parsed_datagram_is_json_and_text_friendly() -> None:
    d = parse_datagram(sample_datagram())
    text = json.dumps(d, default=lambda b: b.hex())
    assert '"header": "000102' in text
    lines = format_datagram(d).splitlines()
    assert len(lines) == 3
    assert "agent=192.0.2.1" in lines[0] and "samples=2" in lines[0]
    assert "rate=100" in lines[1] and "hdr=64 000102" in lines[1]
    assert "if=7" in lines[2] and "name='eth0'" in lines[2]


class ListOutbox:
    """An outbox as the builder sees one (the compiled loop's is core._fastpath.Outbox)."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def append(self, datagram: bytes | bytearray | memoryview) -> None:
        self.items.append(bytes(datagram))

    def datagrams(self) -> list[bytes]:
        return list(self.items)

    def clear(self) -> None:
        self.items = []


def test_an_outbox_gets_every_finished_datagram_in_order_and_take_empties_it():
    plain, boxed = DatagramBuilder("192.0.2.1", max_size=300), DatagramBuilder("192.0.2.1", max_size=300)
    outbox = ListOutbox()
    for i in range(12):
        if i == 5:  # datagrams finished before the outbox came go first
            boxed.set_outbox(outbox)
        for builder in (plain, boxed):
            builder.add_flow_sample(**flow_args(seq=i, header=b"\x01" * 100))
    assert boxed.outbox is outbox and len(outbox.items) > 2
    plain.flush(7)
    boxed.flush(7)
    expected = plain.take()
    assert outbox.items == expected
    assert boxed.take() == expected and outbox.items == [] and boxed.take() == []


def test_a_caller_that_finished_datagrams_itself_moves_the_sequence_on():
    builder = DatagramBuilder("2001:db8::1", max_size=300)
    assert builder.tail_at + 12 == builder.header_length == 40  # version, address type, address, sub-agent
    builder.add_flow_sample(**flow_args())
    builder.sequence = U32 - 1
    start = builder.header_length
    builder.finished_elsewhere(3, start + 8, 1)  # three finished (the first held the pending sample), one packed
    assert (builder.sequence, builder.pending, builder.position) == (1, 1, start + 8)
    builder.finished_elsewhere(0, start + 16, 2)  # none finished: the open datagram grows
    assert (builder.sequence, builder.pending, builder.position) == (1, 3, start + 16)
    with pytest.raises(ValueError):
        builder.finished_elsewhere(0, 301, 1)
