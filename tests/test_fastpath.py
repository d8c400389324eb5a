"""The fast path stays correct: random valid and damaged psample messages, fast path against reference path.

Three levels, each property-based:
- psample.fast_decode either declines or returns exactly what decode_sample, the general parser, reads;
- a SamplePipeline fed through recvmmsg-style slots (its inlined fast path) and a twin fed the same
  messages one by one through its general path leave identical datagrams, stats and per-port state;
- every datagram decodes with the construct reference decoder (sflow_ref), and each flow sample in it
  says what the general parser read from its message.

Damage is structural, the kinds a broken driver, a new kernel or a hostile sender could produce:
truncation, overlong / short / zero nla_len, zero-length and short values, overlong values, huge DATA,
wrong or flagged attribute types, duplicated, missing and reordered attributes, wrong nlmsg_len,
family or command, and bytes after the message in the same read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwsflow.wire import psample, sflow_ref
from hwsflow.wire.sflow import DatagramBuilder
from hwsflow.core.groups import GroupTable
from hwsflow.wire.netlink import GENL_HDR, NLA_HDR, NLMSG_HDR, MalformedMessage, attr, message_extent
from hwsflow.core.pipeline import FCS_LEN, SamplePipeline
from test_psample import _general_as_tuple  # pytest puts tests/ on sys.path

FAMILY = 0x1C
GROUP_BASE = 5000
# (ifindex, direction, header) of the ports the pipelines sample; their groups are GROUP_BASE + i
PORTS = ((0x12345, "ingress"), (7, "ingress"), (0x1000000, "ingress"), (9, "egress"))
FOREIGN_GROUP = 77  # a group no port is bound to
_U16, _U32, _U64 = struct.Struct("=H"), struct.Struct("=I"), struct.Struct("=Q")


# ---------------------------------------------------------------- messages


@dataclass
class Attr:
    type: int
    value: bytes
    nla_len: int | None = None  # None: the true length; else written as is (damage)


def _patterned(size: int, seed: int) -> bytes:
    """size bytes, cheap to make even at 64 KiB (hypothesis draws the size, not every byte)."""
    block = bytes((seed + i * 7) & 0xFF for i in range(256))
    return (block * (size // 256 + 1))[:size]


data_sizes = st.one_of(st.integers(0, 300), st.sampled_from([1500, 9000, 65_000, 65_531 - 100]))


@st.composite
def kernel_attrs(draw) -> list[Attr]:
    """A SAMPLE message's attributes in the kernel's order: mostly act_sample's ingress layout."""
    usual = draw(st.integers(0, 3)) > 0
    attrs = []
    iif = draw(st.sampled_from([3, 0x2345, 0xFFFF]) if usual else st.integers(0, 0xFFFF))
    if iif:
        attrs.append(Attr(psample.ATTR_IIFINDEX, _U16.pack(iif)))
    if not usual and draw(st.booleans()):
        attrs.append(Attr(psample.ATTR_OIFINDEX, _U16.pack(draw(st.integers(1, 0xFFFF)))))
    rate = draw(st.sampled_from([1, 10, 1000, 0xFFFFFFFF]))
    attrs.append(Attr(psample.ATTR_SAMPLE_RATE, _U32.pack(rate)))
    attrs.append(Attr(psample.ATTR_ORIGSIZE, _U32.pack(draw(st.sampled_from([0, 60, 1514, 0xFFFFFFFB, 0xFFFFFFFF])))))
    port = draw(st.integers(0, len(PORTS)))  # len(PORTS): the foreign group
    group = GROUP_BASE + port if port < len(PORTS) else FOREIGN_GROUP
    attrs.append(Attr(psample.ATTR_SAMPLE_GROUP, _U32.pack(group)))
    attrs.append(Attr(psample.ATTR_GROUP_SEQ, _U32.pack(0)))  # set per group by the caller
    if not usual:
        for attr_type, wire in ((psample.ATTR_OUT_TC, _U16), (psample.ATTR_OUT_TC_OCC, _U64),
                                (psample.ATTR_LATENCY, _U64)):
            if draw(st.integers(0, 3)) == 0:
                attrs.append(Attr(attr_type, wire.pack(draw(st.integers(0, 2 ** (8 * wire.size) - 1)))))
    if usual or draw(st.booleans()):
        attrs.append(Attr(psample.ATTR_TIMESTAMP, _U64.pack(1_700_000_000_000_000_000)))
    if usual or draw(st.booleans()):
        attrs.append(Attr(psample.ATTR_PROTO, _U16.pack(0x0008)))
    size = draw(data_sizes)
    if size or usual:
        attrs.append(Attr(psample.ATTR_DATA, _patterned(size, draw(st.integers(0, 255)))))
    if not usual:
        if draw(st.integers(0, 3)) == 0:
            attrs.append(Attr(psample.ATTR_USER_COOKIE, draw(st.binary(min_size=1, max_size=16))))
        if draw(st.integers(0, 3)) == 0:
            attrs.append(Attr(psample.ATTR_SAMPLE_PROBABILITY, b""))
    return attrs


def serialize(attrs: list[Attr], family: int = FAMILY, cmd: int = psample.CMD_SAMPLE) -> bytearray:
    body = bytearray(GENL_HDR.pack(cmd, 1, 0))
    for a in attrs:
        raw = bytearray(attr(a.type, a.value))
        if a.nla_len is not None:
            NLA_HDR.pack_into(raw, 0, a.nla_len, a.type)
        body += raw
    return bytearray(NLMSG_HDR.pack(NLMSG_HDR.size + len(body), family, 0, 0, 0)) + body


DAMAGE = ("truncate", "truncate_and_fix_len", "nla_len", "zero_value", "short_value", "long_value", "retype",
          "duplicate", "drop", "swap", "nlmsg_len", "family", "cmd", "trailing")


@st.composite
def damaged(draw, attrs: list[Attr]) -> tuple[bytes, str]:
    """One message, with one or two kinds of damage (or none): (bytes, what was done)."""
    attrs = [Attr(a.type, a.value, a.nla_len) for a in attrs]
    kinds = draw(st.lists(st.sampled_from(DAMAGE), max_size=2))
    family, cmd, cut, fix_len, nlmsg_len, trailing = FAMILY, psample.CMD_SAMPLE, None, False, None, b""
    for kind in kinds:
        i = draw(st.integers(0, len(attrs) - 1))
        a = attrs[i]
        if kind == "nla_len":
            true = NLA_HDR.size + len(a.value)
            a.nla_len = draw(st.sampled_from([0, 1, 3, 4, 5, true - 1, true + 1, true + 4, 0xFFFF])) & 0xFFFF
        elif kind == "zero_value":
            a.value = b""
        elif kind == "short_value":
            a.value = a.value[: draw(st.integers(0, max(0, len(a.value) - 1)))]
        elif kind == "long_value":
            a.value += draw(st.binary(min_size=1, max_size=8))
        elif kind == "retype":
            a.type = draw(st.sampled_from([a.type | 0x8000, a.type | 0x4000, (a.type + 1) % 17, 99]))
        elif kind == "duplicate":
            attrs.insert(draw(st.integers(0, len(attrs))), Attr(a.type, a.value))
        elif kind == "drop" and len(attrs) > 1:
            del attrs[i]
        elif kind == "swap":
            j = draw(st.integers(0, len(attrs) - 1))
            attrs[i], attrs[j] = attrs[j], attrs[i]
        elif kind == "family":
            family = draw(st.sampled_from([FAMILY + 1, 2, 3, 0x10]))  # another family, ERROR, DONE, ctrl
        elif kind == "cmd":
            cmd = draw(st.sampled_from([psample.CMD_NEW_GROUP, psample.CMD_DEL_GROUP, 255]))
        elif kind in ("truncate", "truncate_and_fix_len"):
            cut, fix_len = draw(st.floats(0, 1)), kind == "truncate_and_fix_len"
        elif kind == "nlmsg_len":
            nlmsg_len = draw(st.sampled_from([0, 15, 16, 19, 20, -1, 1, 4]))
        elif kind == "trailing":
            trailing = draw(st.binary(min_size=1, max_size=40))
    msg = serialize(attrs, family, cmd)
    if cut is not None:
        msg = msg[: int(len(msg) * cut)]
        if fix_len and len(msg) >= 4:
            _U32.pack_into(msg, 0, len(msg))
    if nlmsg_len is not None and len(msg) >= 4:
        _U32.pack_into(msg, 0, nlmsg_len if nlmsg_len >= 15 else (len(msg) + nlmsg_len) & 0xFFFFFFFF)
    return bytes(msg + trailing), "+".join(kinds) or "none"


@st.composite
def message_streams(draw, max_messages: int = 12) -> list[bytes]:
    """Messages as a port's samples arrive: GROUP_SEQ mostly the next one per group, some damaged."""
    count = draw(st.integers(1, max_messages))
    seqs: dict[bytes, int] = {}
    out = []
    for _ in range(count):
        attrs = draw(kernel_attrs())
        group = next(a.value for a in attrs if a.type == psample.ATTR_SAMPLE_GROUP)
        step = draw(st.sampled_from([1, 1, 1, 1, 1, 2, 0, -3, 2**31]))
        seqs[group] = (seqs.get(group, 0xFFFFFFFD) + step) & 0xFFFFFFFF  # wraps within a run
        next(a for a in attrs if a.type == psample.ATTR_GROUP_SEQ).value = _U32.pack(seqs[group])
        if draw(st.integers(0, 2)) == 0:
            msg, _what = draw(damaged(attrs))
        else:
            msg = bytes(serialize(attrs))
        out.append(msg)
    return out


# ---------------------------------------------------------------- psample level


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel_attrs().flatmap(damaged))
def test_fast_decode_declines_or_agrees_with_the_general_parser(case):
    msg, _what = case
    hit = psample.fast_decode(msg, 0, len(msg), FAMILY)
    if hit is None:
        return
    group, seq, rate, orig, iif, start, length, end = hit
    assert _general_as_tuple(msg[:end]) == (group, seq, rate, orig, iif, msg[start:start + length])
    assert NLMSG_HDR.unpack_from(msg)[0] == end  # the message it read is the one netlink framed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel_attrs())
def test_fast_decode_takes_every_undamaged_usual_message(attrs):
    """The usual layout must hit the fast path, or the equality tests above would prove nothing."""
    msg = bytes(serialize(attrs))
    types = [a.type for a in attrs]
    usual = [psample.ATTR_IIFINDEX, psample.ATTR_SAMPLE_RATE, psample.ATTR_ORIGSIZE, psample.ATTR_SAMPLE_GROUP,
             psample.ATTR_GROUP_SEQ, psample.ATTR_TIMESTAMP, psample.ATTR_PROTO, psample.ATTR_DATA]
    assert (psample.fast_decode(msg, 0, len(msg), FAMILY) is not None) == (types == usual)


# ---------------------------------------------------------------- pipeline level


def make_pipeline(headers: tuple[int, ...], max_size: int, expanded: bool, agent: str) -> SamplePipeline:
    groups = GroupTable(GROUP_BASE)
    for i, ((ifindex, direction), header) in enumerate(zip(PORTS, headers)):
        groups.bind(ifindex, f"p{i}", direction, 10, header, wanted=GROUP_BASE + i)
    pipeline = SamplePipeline(DatagramBuilder(agent, max_size=max_size, expanded=expanded), groups, FAMILY)
    pipeline.set_links([1, 7, 9, 0x12345, 0x1000000])
    return pipeline


def state(pipeline: SamplePipeline) -> tuple:
    """Everything the path leaves behind besides datagrams: stats, bindings, data sources, builder."""
    bindings = sorted(pipeline.groups.by_group.items())
    return (pipeline.stats, bindings, sorted(pipeline.groups.sources.items()), pipeline.builder.sequence,
            pipeline.builder.pending)


def slots(messages: list[bytes], stride: int) -> bytearray:
    """A recvmmsg area: message i at i * stride, stale bytes after each (the area is reused)."""
    area = bytearray(b"\xa5") * (stride * len(messages))
    for i, msg in enumerate(messages):
        area[i * stride:i * stride + len(msg)] = msg
    return area


def reference_feed(pipeline: SamplePipeline, messages: list[bytes]) -> None:
    """The general path alone: every message of every read through decode_sample."""
    for msg in messages:
        pos = 0
        while pos < len(msg):
            pipeline.stats.messages += 1
            pos = pipeline._feed_general(msg, pos, len(msg), 42)


setups = st.fixed_dictionaries({
    "headers": st.tuples(*[st.sampled_from([0, 1, 64, 128, 129, 1024, 2000])] * len(PORTS)),
    "max_size": st.sampled_from([200, 700, 1400, 9000]),
    "expanded": st.booleans(),
    "agent": st.sampled_from(["192.0.2.1", "2001:db8::1"]),
})
# slack after the longest message: 0 makes the stride exactly the longest message (the fast layout's
# 84 bytes when every message is that short), odd values leave slots unaligned
strides = st.sampled_from([0, 0, 1, 3, 64, 4096])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(setups, message_streams(), strides, st.booleans())
def test_slots_fast_path_and_general_path_leave_identical_results(setup, messages, slack, one_read_each):
    fast, reference = make_pipeline(**setup), make_pipeline(**setup)
    if one_read_each:
        for msg in messages:
            fast.feed(msg, len(msg), 42)
    else:
        stride = max(len(m) for m in messages) + slack
        fast.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, 42)
    assert_as_the_general_path(fast, reference, messages)


def assert_as_the_general_path(fast: SamplePipeline, reference: SamplePipeline, messages: list[bytes]) -> None:
    """reference reads messages through the general path; it must end where fast did, datagrams included."""
    reference_feed(reference, messages)
    assert state(fast) == state(reference)
    fast.flush(42)
    reference.flush(42)
    assert fast.take() == reference.take()


def test_stride_of_exactly_the_fast_layout_reads_every_slot():
    """Slots of FAST_SIZE bytes: the last slot's data offset is the area's end, and it must still be read."""
    messages = [bytes(serialize([Attr(psample.ATTR_SAMPLE_GROUP, _U32.pack(FOREIGN_GROUP))])) for _ in range(3)]
    messages = [m + bytes(psample.FAST_SIZE - len(m)) for m in messages]  # trailing zeros: not a message
    pipeline = make_pipeline((64,) * len(PORTS), 1400, False, "192.0.2.1")
    pipeline.feed_slots(slots(messages, psample.FAST_SIZE), [psample.FAST_SIZE] * 3, psample.FAST_SIZE, 1)
    reference = make_pipeline((64,) * len(PORTS), 1400, False, "192.0.2.1")
    reference_feed(reference, messages)
    assert pipeline.stats == reference.stats and pipeline.stats.messages >= 3


def test_usual_messages_never_reach_the_general_parser(monkeypatch):
    """Guard for the equality tests: the inlined path really takes the usual layout from slots."""
    messages = []
    for seq in range(1, 40):
        sample = psample.Sample(group=GROUP_BASE + seq % 2, seq=seq // 2, raw_rate=10, orig_size=1514, iif=3,
                                data=_patterned(128, seq), timestamp=1, proto=8)
        messages.append(psample.build_message(sample, FAMILY))
    pipeline = make_pipeline((128,) * len(PORTS), 1400, False, "192.0.2.1")
    monkeypatch.setattr(pipeline, "_feed_general", lambda *a: pytest.fail("general path used"))
    monkeypatch.setattr(pipeline, "_export", lambda *a: pytest.fail("slow export used"))
    stride = 4096
    pipeline.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, 1)
    assert pipeline.stats.samples == pipeline.stats.inline == len(messages)


def _usual(group: int, seq: int, header: int = 128) -> bytes:
    sample = psample.Sample(group=group, seq=seq, raw_rate=10, orig_size=1514, iif=3,
                            data=_patterned(header, seq), timestamp=1, proto=8)
    return psample.build_message(sample, FAMILY)


def test_a_damaged_message_costs_its_chunk_no_more_than_the_general_parser_for_itself(monkeypatch):
    """Chunks of 128 slots are checked at once: one odd message halves its chunk until it is alone, and
    only it meets the general parser; the rest stay inline, with the same results as the reference."""
    messages = [_usual(GROUP_BASE + i % 2, i // 2 + 1) for i in range(300)]
    messages[5] = messages[5][:-8]  # truncated: nlmsg_len no longer matches what was read
    messages[131] = _usual(FOREIGN_GROUP, 1)  # the usual layout, of a group that is not ours
    messages[200] = messages[200] + bytes(4)  # trailing bytes after the message
    fast = make_pipeline((128,) * len(PORTS), 1400, False, "192.0.2.1")
    reference = make_pipeline((128,) * len(PORTS), 1400, False, "192.0.2.1")
    general = fast._feed_general
    parsed: list[int] = []
    monkeypatch.setattr(fast, "_feed_general", lambda buf, pos, *rest: parsed.append(pos) or general(buf, pos, *rest))
    stride = 4096
    fast.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, 42)
    assert_as_the_general_path(fast, reference, messages)
    # only slots 5 and 200 (its message, then its trailing bytes): the foreign sample is read inline
    assert sorted({pos // stride for pos in parsed}) == [5, 200]
    assert fast.stats.inline == 297 and fast.stats.foreign == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(setups, message_streams(max_messages=70), st.sampled_from([0, 4, 64]))
def test_long_streams_through_every_chunk_size_leave_the_general_paths_results(setup, messages, slack):
    """Streams long enough for chunks of 64, 32, ... (the equality test above stays within 12 messages)."""
    fast, reference = make_pipeline(**setup), make_pipeline(**setup)
    stride = (max(len(m) for m in messages) + slack + 3) & ~3
    fast.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, 42)
    assert_as_the_general_path(fast, reference, messages)


def test_a_rebound_or_released_group_is_packed_by_its_new_binding():
    """The inline table follows GroupTable: a new header size, then a release, take effect at once."""
    pipeline = make_pipeline((128,) * len(PORTS), 1400, False, "192.0.2.1")
    stride = 4096
    first = [_usual(GROUP_BASE + 1, seq) for seq in range(1, 9)]
    pipeline.feed_slots(slots(first, stride), [len(m) for m in first], stride, 1)
    pipeline.groups.bind(7, "p1", "ingress", 10, 64, wanted=GROUP_BASE + 1)
    second = [_usual(GROUP_BASE + 1, seq) for seq in range(9, 17)]
    pipeline.feed_slots(slots(second, stride), [len(m) for m in second], stride, 1)
    pipeline.groups.release(7, "ingress")
    inline = dict(pipeline._inline_table())
    pipeline.feed_slots(slots(second, stride), [len(m) for m in second], stride, 1)
    pipeline.flush(1)
    headers = [len(s["records"][0]["header"]) for d in pipeline.take() for s in sflow_ref.parse_datagram(d)["samples"]]
    assert headers == [128] * 8 + [64] * 8
    assert pipeline.stats.foreign == 8
    assert pipeline._inline_table() == inline and GROUP_BASE + 1 not in inline  # misses add nothing


# ---------------------------------------------------------------- against the reference decoder


def general_samples(read: bytes) -> list[psample.Sample]:
    """The SAMPLE messages of our family in one read, as the general parser decodes them."""
    found, pos = [], 0
    while pos < len(read):
        try:
            msg_type, start, stop = message_extent(read, pos, len(read))
        except MalformedMessage:
            break
        if msg_type == FAMILY:
            try:
                found.append(psample.decode_sample(read, start, stop))
            except MalformedMessage:
                pass
        pos = (stop + 3) & ~3
    return found


def expected_flows(pipeline: SamplePipeline, messages: list[bytes]) -> dict[int, list[tuple]]:
    """Per data source, in order: (rate, frame_length, header bytes, input, output, queue records) as
    the general parser reads each message that is a sample of one of the pipeline's groups."""
    out: dict[int, list[tuple]] = {}
    for sample in (s for msg in messages for s in general_samples(msg)):
        binding = pipeline.groups.by_group.get(sample.group)
        if binding is None:
            continue
        ifindex = binding.source.ifindex
        frame = min(sample.orig_size + FCS_LEN, 0xFFFFFFFF)
        if binding.direction == "ingress":
            ports = (ifindex, 0)
        else:
            ports = (pipeline.ifindex_by_low16.get(sample.iif, 0), ifindex)
        queue = sum(v is not None for v in (sample.out_tc, sample.out_tc_occ, sample.latency))
        out.setdefault(ifindex, []).append((sample.rate, frame, sample.data[:binding.header]) + ports + (queue,))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(setups, message_streams(), strides)
def test_every_datagram_decodes_and_says_what_the_general_parser_read(setup, messages, slack):
    pipeline = make_pipeline(**setup)
    stride = max(len(m) for m in messages) + slack
    pipeline.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, 42)
    pipeline.flush(42)
    datagrams = pipeline.take()
    got: dict[int, list[dict]] = {}
    for number, datagram in enumerate(datagrams, start=1):
        assert len(datagram) <= setup["max_size"]
        parsed = sflow_ref.parse_datagram(datagram)
        assert parsed["sequence_number"] == number and parsed["agent_address"] == str(setup["agent"])
        for sample in parsed["samples"]:
            assert sample["kind"] == "flow" and sample["expanded"] == (setup["expanded"] or
                                                                        sample["source_id_index"] > 0xFFFFFF)
            got.setdefault(sample["source_id_index"], []).append(sample)
    want = expected_flows(pipeline, messages)
    assert sorted(got) == sorted(want)
    for ifindex, flows in got.items():
        assert [f["sequence_number"] for f in flows] == list(range(1, len(flows) + 1))
        for flow, (rate, frame, data, input_if, output_if, queue) in zip(flows, want[ifindex], strict=True):
            record = flow["records"][0]
            assert [(r["enterprise"], r["format"]) for r in flow["records"]][:1] == [(0, 1)]
            assert len(flow["records"]) == 1 + queue
            assert (flow["sampling_rate"], flow["input"], flow["output"]) == (rate, input_if, output_if)
            assert (record["frame_length"], record["stripped"]) == (frame, FCS_LEN)
            # a sample too big for max_size keeps the leading header bytes that fit; everything else in a
            # datagram of one sample takes at most 152 bytes (IPv6 agent, expanded sample, 3 queue records)
            assert data.startswith(record["header"])
            assert record["header"] == data or len(data) > setup["max_size"] - 152
            assert record["header_length"] == len(record["header"])
