"""The compiled loop and the Python path stay equal: the one place for the fast paths' equality tests.

Levels, each property-based where it can be:
- psample.fast_decode (the usual layout, read in Python) either declines or returns exactly what
  decode_sample, the general parser, reads;
- a SamplePipeline on each path (compiled=True: the C loop with the Python path for what it leaves;
  compiled=False: the Python path alone) fed the same random valid and damaged batches through recvmmsg
  slots leaves the same datagrams, stats, pools, drops, sequence numbers and builder state as a twin fed
  every message through the general parser: so the two paths equal each other, including GROUP_SEQ
  and counter wraps at 2**32, counters beyond 64 bits, foreign groups and malformed messages;
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

from hwsflow.core import fastpath
from hwsflow.wire import psample, sflow_ref
from hwsflow.wire.sflow import DatagramBuilder, encode_queue_records
from hwsflow.core.groups import GroupTable
from hwsflow.wire.netlink import GENL_HDR, NLA_HDR, NLMSG_HDR, MalformedMessage, attr, message_extent
from hwsflow.core.pipeline import FCS_LEN, SamplePipeline
from hwsflow.core.tunnels import tunnel_records

from test_pipeline import BIG_IFINDEX  # pytest puts tests/ on sys.path
from test_pipeline import kernel_sample as one_port_sample
from test_pipeline import make_pipeline as one_port_pipeline
from test_psample import ingress_sample
from test_tunnels import tunnel_keys

PATHS = pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])


def test_the_compiled_loop_is_built_here():
    """The suite runs where the extension builds (tools/setup-test-env): it must really be there, or the
    compiled=True cases would prove nothing."""
    assert fastpath.module().FLOW_FIELDS
    assert SamplePipeline(DatagramBuilder("192.0.2.1"), GroupTable(1), 1, compiled=True).path == "compiled"


def test_the_environment_variable_turns_the_compiled_loop_off(monkeypatch):
    monkeypatch.setenv(fastpath.ENV_PURE_PYTHON, "1")
    assert not fastpath.available() and fastpath.ENV_PURE_PYTHON in fastpath.describe()
    assert SamplePipeline(DatagramBuilder("192.0.2.1"), GroupTable(1), 1).path == "python"
    monkeypatch.setenv(fastpath.ENV_PURE_PYTHON, "0")
    assert fastpath.describe() == "compiled"


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
    if draw(st.integers(0, 4)) == 0:  # a tunnel key follows DATA: the usual layout but for it
        attrs.append(Attr(psample.ATTR_TUNNEL, psample.build_tunnel(draw(tunnel_keys()))))
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

def test_fast_path_takes_the_usual_layout():
    sample = ingress_sample()
    msg = psample.build_message(sample, FAMILY)
    group, seq, rate, orig, iif, start, length, end = psample.fast_decode(msg, 0, len(msg), FAMILY)
    assert (group, seq, rate, orig, iif, end) == (1000, 41, 10, 98, 3, len(msg))
    assert msg[start:start + length] == sample.data


@pytest.mark.parametrize("change", [
    dict(oif=4),  # egress layout
    dict(cookie=b"c"),
    dict(probability=True),
    dict(out_tc=1),
    dict(out_tc_occ=1),
    dict(latency=1),
    dict(timestamp=None),  # kernels before 5.13
    dict(iif=0),
    dict(tunnel=psample.TunnelKey(id=100, ipv4_dst=bytes(4))),  # TUNNEL after DATA
])
def test_fast_path_declines_other_layouts(change):
    msg = psample.build_message(ingress_sample(**change), FAMILY)
    assert psample.fast_decode(msg, 0, len(msg), FAMILY) is None


def test_fast_path_declines_other_families():
    msg = psample.build_message(ingress_sample(), FAMILY)
    assert psample.fast_decode(msg, 0, len(msg), FAMILY + 1) is None


def _fast_as_tuple(msg: bytes):
    hit = psample.fast_decode(msg, 0, len(msg), FAMILY)
    if hit is None:
        return None
    group, seq, rate, orig, iif, start, length, _end = hit
    return group, seq, rate, orig, iif, msg[start:start + length]


def _general_as_tuple(msg: bytes):
    try:
        s = psample.decode_sample(msg)
    except MalformedMessage:
        return "malformed"
    return s.group, s.seq, s.rate, s.orig_size, s.iif, s.data


samples = st.builds(
    psample.Sample,
    group=st.integers(0, 2**32 - 1), seq=st.integers(0, 2**32 - 1), raw_rate=st.integers(1, 2**32 - 1),
    orig_size=st.integers(0, 2**32 - 1), iif=st.integers(0, 2**16 - 1), oif=st.sampled_from([0, 0, 5]),
    data=st.binary(max_size=300), timestamp=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    proto=st.one_of(st.none(), st.integers(0, 2**16 - 1)), probability=st.booleans(),
    out_tc=st.one_of(st.none(), st.integers(0, 2**16 - 1)),
    out_tc_occ=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    latency=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)


@settings(max_examples=400, deadline=None)
@given(samples)
def test_fast_path_agrees_with_general_parser_on_valid_messages(sample):
    msg = psample.build_message(sample, FAMILY)
    fast = _fast_as_tuple(msg)
    decoded = psample.decode_sample(msg)
    assert decoded == sample
    if fast is not None:
        assert fast == _general_as_tuple(msg)


@settings(max_examples=400, deadline=None)
@given(samples, st.data())
def test_fast_path_never_accepts_what_the_general_parser_rejects(sample, data):
    msg = bytearray(psample.build_message(sample, FAMILY))
    for _ in range(data.draw(st.integers(1, 4))):
        msg[data.draw(st.integers(0, len(msg) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(msg)))
    mutated = bytes(msg[:cut])
    fast = _fast_as_tuple(mutated)
    general = _general_as_tuple(mutated)
    if fast is not None:
        assert general == fast



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


def make_pipeline(headers: tuple[int, ...], max_size: int, expanded: bool, agent: str,
                  compiled: bool = False, counters: int = 0, credit: int = 0, hold: int = 0) -> SamplePipeline:
    """Ports bound as PORTS says; counters: where every source's flow_seq, pool and drops start; credit
    and hold: what re-syncs left (packets already counted for lost samples, the pool ahead of tc's count)."""
    groups = GroupTable(GROUP_BASE)
    for i, ((ifindex, direction), header) in enumerate(zip(PORTS, headers)):
        groups.bind(ifindex, f"p{i}", direction, 10, header, wanted=GROUP_BASE + i)
    for source in groups.sources.values():
        source.flow_seq = source.pool = source.drops = counters
        source.resync_credit, source.pool_hold = credit, hold
    pipeline = SamplePipeline(DatagramBuilder(agent, max_size=max_size, expanded=expanded), groups, FAMILY,
                              compiled=compiled)
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
    # 256: the smallest datagram_size config accepts, where the largest extra records (three queue records,
    # an IPv6 tunnel and a VNI) still leave the header room with an IPv6 agent and expanded samples
    "max_size": st.sampled_from([256, 700, 1400, 9000]),
    "expanded": st.booleans(),
    "agent": st.sampled_from(["192.0.2.1", "2001:db8::1"]),
    # where the sources' counters start: 0, just below sFlow's 32-bit wrap, near and beyond 2**64 (the
    # compiled loop leaves a group it cannot hold in 64 bits to the Python path)
    "counters": st.sampled_from([0, 0, 2**32 - 3, 2**64 - 40, 2**70]),
    # re-sync state at the start, in packets (each sample here is 1-in-10): none, part of a sample, a few
    # samples, and beyond 64 bits (the Python path's)
    "credit": st.sampled_from([0, 0, 7, 35, 2**65]),
    "hold": st.sampled_from([0, 0, 7, 35, 2**65]),
})
# slack after the longest message: 0 makes the stride exactly the longest message (the fast layout's
# 84 bytes when every message is that short), odd values leave slots unaligned
strides = st.sampled_from([0, 0, 1, 3, 64, 4096])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(setups, message_streams(), strides, st.booleans())
@PATHS
def test_each_path_leaves_what_the_general_path_leaves(compiled, setup, messages, slack, one_read_each):
    fast, reference = make_pipeline(**setup, compiled=compiled), make_pipeline(**setup)
    if one_read_each:
        for msg in messages:
            fast.feed(msg, len(msg), 42)
    else:
        stride = max(max(len(m) for m in messages) + slack, 1)  # damage can empty every message; a recvmmsg slot is never 0 bytes
        fast.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, 42)
    assert_as_the_general_path(fast, reference, messages)


def assert_as_the_general_path(fast: SamplePipeline, reference: SamplePipeline,
                               messages: list[bytes]) -> list[bytes]:
    """reference reads messages through the general path; it must end where fast did, datagrams included.
    Returns those datagrams."""
    reference_feed(reference, messages)
    assert state(fast) == state(reference)
    fast.flush(42)
    reference.flush(42)
    datagrams = fast.take()
    assert datagrams == reference.take()
    return datagrams


@PATHS
def test_stride_of_exactly_the_usual_layout_reads_every_slot(compiled):
    """Slots of USUAL_SIZE bytes: the last slot's data offset is the area's end, and it must still be read."""
    messages = [bytes(serialize([Attr(psample.ATTR_SAMPLE_GROUP, _U32.pack(FOREIGN_GROUP))])) for _ in range(3)]
    messages = [m + bytes(psample.USUAL_SIZE - len(m)) for m in messages]  # trailing zeros: not a message
    pipeline = make_pipeline((64,) * len(PORTS), 1400, False, "192.0.2.1", compiled)
    size = psample.USUAL_SIZE
    pipeline.feed_slots(slots(messages, size), [size] * 3, size, 1)
    reference = make_pipeline((64,) * len(PORTS), 1400, False, "192.0.2.1")
    reference_feed(reference, messages)
    assert pipeline.stats == reference.stats and pipeline.stats.messages >= 3


def test_usual_messages_never_reach_the_python_path(monkeypatch):
    """Guard for the equality tests: the compiled loop really takes the usual layout from slots."""
    messages = []
    for seq in range(1, 40):
        sample = psample.Sample(group=GROUP_BASE + seq % 2, seq=seq // 2, raw_rate=10, orig_size=1514, iif=3,
                                data=_patterned(128, seq), timestamp=1, proto=8)
        messages.append(psample.build_message(sample, FAMILY))
    pipeline = make_pipeline((128,) * len(PORTS), 1400, False, "192.0.2.1", compiled=True)
    monkeypatch.setattr(pipeline, "_feed_rest", lambda *a: pytest.fail("Python path used"))
    stride = 4096
    pipeline.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, 1)
    assert pipeline.stats.samples == pipeline.stats.compiled == len(messages)


def _usual(group: int, seq: int, header: int = 128) -> bytes:
    sample = psample.Sample(group=group, seq=seq, raw_rate=10, orig_size=1514, iif=3,
                            data=_patterned(header, seq), timestamp=1, proto=8)
    return psample.build_message(sample, FAMILY)


def feed_compiled_watching_python(monkeypatch: pytest.MonkeyPatch,
                                  messages: list[bytes]) -> tuple[SamplePipeline, list[int], list[bytes]]:
    """messages through the compiled loop in slots: the pipeline, the slots it left to the Python path, and
    the datagrams, checked against the general path's."""
    fast = make_pipeline((128,) * len(PORTS), 1400, False, "192.0.2.1", compiled=True)
    reference = make_pipeline((128,) * len(PORTS), 1400, False, "192.0.2.1")
    rest = fast._feed_rest
    parsed: list[int] = []
    monkeypatch.setattr(fast, "_feed_rest", lambda buf, pos, *more: parsed.append(pos) or rest(buf, pos, *more))
    stride = 4096
    fast.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, 42)
    datagrams = assert_as_the_general_path(fast, reference, messages)
    return fast, [pos // stride for pos in parsed], datagrams


def test_the_compiled_loop_leaves_only_the_odd_slots_to_python(monkeypatch):
    """A damaged message, a foreign group's sample: the compiled loop stops at each, Python takes that
    slot alone, and the loop goes on after it, with the same results as the reference."""
    messages = [_usual(GROUP_BASE + i % 2, i // 2 + 1) for i in range(300)]
    messages[5] = messages[5][:-8]  # truncated: nlmsg_len no longer matches what was read
    messages[131] = _usual(FOREIGN_GROUP, 1)  # the usual layout, of a group that is not ours
    messages[200] = messages[200] + bytes(4)  # trailing bytes after the message
    fast, python_slots, _ = feed_compiled_watching_python(monkeypatch, messages)
    assert python_slots == [5, 131, 200]
    assert fast.stats.compiled == 297 and fast.stats.foreign == 1


@PATHS
def test_datagram_sequence_numbers_and_uptime_wrap_alike_where_the_loop_finishes_datagrams(compiled):
    """The compiled loop finishes full datagrams itself (their sequence number, uptime and sample count, into
    the builder's outbox): the same bytes as the builder's own finishing, across the 2**32 wraps, with the
    Python path's samples in the same datagrams."""
    messages = [_usual(GROUP_BASE + i % 2, i // 2 + 1) for i in range(120)]
    messages[7] = _usual(GROUP_BASE + 3, 1)  # egress: the Python path's, in the middle of a datagram
    uptime = 2**32 + 5
    fast = make_pipeline((128,) * len(PORTS), 700, False, "192.0.2.1", compiled)
    reference = make_pipeline((128,) * len(PORTS), 700, False, "192.0.2.1")
    for pipeline in (fast, reference):
        pipeline.builder.sequence = 2**32 - 3
    stride = 512
    fast.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, uptime)
    for msg in messages:
        reference.feed(msg, len(msg), uptime)
    assert state(fast) == state(reference)
    datagrams = fast.take()
    assert datagrams == reference.take() and len(datagrams) > 4
    parsed = [sflow_ref.parse_datagram(d) for d in datagrams]
    assert [d["sequence_number"] for d in parsed[:5]] == [2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 1]
    assert {d["uptime"] for d in parsed} == {5}
    assert sum(len(d["samples"]) for d in parsed) + fast.builder.pending == 120
    assert fast.stats.compiled == (119 if compiled else 0)


def test_the_compiled_loop_finishes_datagrams_only_into_an_outbox():
    fast = make_pipeline((128,) * len(PORTS), 700, False, "192.0.2.1", compiled=True)
    fast.builder = DatagramBuilder("192.0.2.1", max_size=700)  # not through set_builder: no outbox
    msg = _usual(GROUP_BASE, 1)
    with pytest.raises(TypeError, match="Outbox"):
        fast.feed_slots(msg, [len(msg)], len(msg), 42)
    assert fast.groups.by_group[GROUP_BASE].last_group_seq is None  # nothing accounted


def test_the_compiled_loop_leaves_tunnel_samples_to_python(monkeypatch):
    """A sample with TUNNEL after DATA is the usual layout but for it: the compiled loop must leave exactly
    that slot to the Python path, whose general parser adds the tunnel records."""
    messages = [_usual(GROUP_BASE + i % 2, i // 2 + 1) for i in range(40)]
    key = psample.TunnelKey(id=5001, ipv4_src=bytes((192, 0, 2, 10)), ipv4_dst=bytes((192, 0, 2, 20)), tp_dst=4789)
    for i in (0, 17, 39):
        sample = psample.decode_sample(messages[i])
        sample.tunnel = key
        messages[i] = psample.build_message(sample, FAMILY)
    fast, python_slots, datagrams = feed_compiled_watching_python(monkeypatch, messages)
    assert python_slots == [0, 17, 39]
    assert fast.stats.compiled == 37
    flows = [s for d in datagrams for s in sflow_ref.parse_datagram(d)["samples"]]
    assert [i for i, f in enumerate(flows) if [r["format"] for r in f["records"]] == [1, 1024, 1030]] == [0, 17, 39]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(setups, message_streams(max_messages=70), st.sampled_from([0, 4, 64]))
@PATHS
def test_long_streams_leave_the_general_paths_results(compiled, setup, messages, slack):
    """Streams of up to 70 messages, several datagrams' worth (the test above stays within 12)."""
    fast, reference = make_pipeline(**setup, compiled=compiled), make_pipeline(**setup)
    stride = (max(len(m) for m in messages) + slack + 3) & ~3
    fast.feed_slots(slots(messages, stride), [len(m) for m in messages], stride, 42)
    assert_as_the_general_path(fast, reference, messages)


@PATHS
def test_a_rebound_or_released_group_is_packed_by_its_new_binding(compiled):
    """Both paths follow GroupTable: a new header size, then a release, take effect at once."""
    pipeline = make_pipeline((128,) * len(PORTS), 1400, False, "192.0.2.1", compiled)
    stride = 4096
    first = [_usual(GROUP_BASE + 1, seq) for seq in range(1, 9)]
    pipeline.feed_slots(slots(first, stride), [len(m) for m in first], stride, 1)
    pipeline.groups.bind(7, "p1", "ingress", 10, 64, wanted=GROUP_BASE + 1)
    second = [_usual(GROUP_BASE + 1, seq) for seq in range(9, 17)]
    pipeline.feed_slots(slots(second, stride), [len(m) for m in second], stride, 1)
    pipeline.groups.release(7, "ingress")
    pipeline.feed_slots(slots(second, stride), [len(m) for m in second], stride, 1)
    pipeline.flush(1)
    headers = [len(s["records"][0]["header"]) for d in pipeline.take() for s in sflow_ref.parse_datagram(d)["samples"]]
    assert headers == [128] * 8 + [64] * 8
    assert pipeline.stats.foreign == 8


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
    """Per data source, in order: (rate, frame_length, header bytes, input, output, and the count and bytes
    of the records after the header: queue and tunnel records) as
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
        records, extra = encode_queue_records(sample.out_tc, sample.out_tc_occ, sample.latency)
        extra_bytes = len(records)
        if sample.tunnel is not None:
            records, count = tunnel_records(sample.tunnel, binding.direction == "ingress")
            extra, extra_bytes = extra + count, extra_bytes + len(records)
        out.setdefault(ifindex, []).append((sample.rate, frame, sample.data[:binding.header]) + ports
                                           + (extra, extra_bytes))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(setups, message_streams(), strides)
@PATHS
def test_every_datagram_decodes_and_says_what_the_general_parser_read(compiled, setup, messages, slack):
    pipeline = make_pipeline(**setup, compiled=compiled)
    stride = max(max(len(m) for m in messages) + slack, 1)  # damage can empty every message; a recvmmsg slot is never 0 bytes
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
        first = setup["counters"] + 1
        assert [f["sequence_number"] for f in flows] == [n & 0xFFFFFFFF for n in range(first, first + len(flows))]
        for flow, (rate, frame, data, input_if, output_if, extra, extra_bytes) in zip(flows, want[ifindex],
                                                                                      strict=True):
            record = flow["records"][0]
            assert [(r["enterprise"], r["format"]) for r in flow["records"]][:1] == [(0, 1)]
            assert len(flow["records"]) == 1 + extra
            assert (flow["sampling_rate"], flow["input"], flow["output"]) == (rate, input_if, output_if)
            assert (record["frame_length"], record["stripped"]) == (frame, FCS_LEN)
            # a sample too big for max_size keeps the leading header bytes that fit; everything else in a
            # datagram of one sample takes at most 116 bytes (IPv6 agent, expanded sample), plus its queue and
            # tunnel records
            assert data.startswith(record["header"])
            assert record["header"] == data or len(data) > setup["max_size"] - 116 - extra_bytes
            assert record["header_length"] == len(record["header"])


# ---------------------------------------------------------------- one port, one read at a time


layouts = st.fixed_dictionaries({
    "oif": st.sampled_from([0, 0, 9]), "timestamp": st.sampled_from([None, 1]),
    "cookie": st.sampled_from([None, b"c"]), "data": st.binary(max_size=200),
    "orig_size": st.integers(0, 2**32 - 1),
    "out_tc": st.sampled_from([None, None, 0, 7]),
    "out_tc_occ": st.one_of(st.none(), st.none(), st.integers(0, 2**64 - 1)),
    "latency": st.one_of(st.none(), st.none(), st.integers(0, 2**64 - 1)),
})


def twin_pipelines(direction: str, ifindex: int, header: int, max_size: int, expanded: bool, agent: str):
    """Two pipelines, one port bound in the given direction: the compiled path's, then the Python path's."""
    made = []
    for compiled in (True, False):
        groups = GroupTable(1000)
        groups.bind(ifindex, "p0", direction, 10, header)
        pipeline = SamplePipeline(DatagramBuilder(agent, max_size=max_size, expanded=expanded), groups, FAMILY,
                                  compiled=compiled)
        pipeline.set_links([1, 7, ifindex])
        made.append(pipeline)
    return made


def one_port_state(pipeline: SamplePipeline):
    """Everything the path leaves behind besides datagrams: stats, binding, data source, builder."""
    (binding,) = pipeline.groups.by_group.values()
    return pipeline.stats, binding, binding.source, pipeline.builder.sequence, pipeline.builder.pending


one_port_setups = st.fixed_dictionaries({
    "direction": st.sampled_from(["ingress", "ingress", "egress"]),
    "ifindex": st.sampled_from([BIG_IFINDEX, 0xFFFFFF, 0x1000000]),  # compact, its limit, expanded
    "header": st.sampled_from([64, 128, 129, 1024]),
    "max_size": st.sampled_from([300, 700, 1400]),
    "expanded": st.booleans(),
    "agent": st.sampled_from(["192.0.2.1", "2001:db8::1"]),
})
# GROUP_SEQ steps: the next one, gaps, repeats, jumps back (a recreated group), a run of zeros (mlx5)
seq_steps = st.sampled_from([1, 1, 1, 1, 2, 5, 0, -3, 2**31])
# two thirds in act_sample's usual layout, which feed packs itself; the rest anything
usual_or_any = st.one_of(
    st.fixed_dictionaries({"data": st.binary(max_size=300), "orig_size": st.integers(0, 2**32 - 1)}),
    st.fixed_dictionaries({"data": st.binary(min_size=60, max_size=70)}), layouts)


@settings(max_examples=300, deadline=None)
@given(one_port_setups, st.lists(st.tuples(usual_or_any, seq_steps), min_size=1, max_size=16), st.booleans())
def test_compiled_and_python_paths_export_identical_datagrams(setup, specs, zeros):
    """One read each, as recv hands them: the same datagram bytes and the same state on both paths."""
    msgs, seq = [], 2**32 - 3  # wraps within the run
    for spec, step in specs:
        seq = 0 if zeros else (seq + step) & 0xFFFFFFFF
        msgs.append(psample.build_message(one_port_sample(seq, **spec), FAMILY))
    fast, slow = twin_pipelines(**setup)
    for msg in msgs:
        fast.feed(msg, len(msg), 42)
        slow.feed(msg, len(msg), 42)
    assert one_port_state(fast) == one_port_state(slow)
    fast.flush(42)
    slow.flush(42)
    assert fast.take() == slow.take()


@settings(max_examples=300, deadline=None)
@given(layouts, st.data())
@PATHS
def test_each_path_acts_as_the_general_path_on_randomly_damaged_bytes(compiled, spec, data):
    """Whatever bytes arrive, both paths must act as the general path."""
    msg = bytearray(psample.build_message(one_port_sample(7, **spec), FAMILY))
    for _ in range(data.draw(st.integers(0, 3))):
        msg[data.draw(st.integers(0, len(msg) - 1))] = data.draw(st.integers(0, 255))
    msg = bytes(msg[:data.draw(st.integers(0, len(msg)))])
    fast = one_port_pipeline(header=128, compiled=compiled)
    slow = one_port_pipeline(header=128, compiled=False)
    fast.feed(msg, len(msg), 42)
    pos = 0
    while pos < len(msg):
        slow.stats.messages += 1
        pos = slow._feed_general(msg, pos, len(msg), 42)
    fast.flush(42)
    slow.flush(42)
    assert fast.take() == slow.take()
    assert fast.stats == slow.stats
