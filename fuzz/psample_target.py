"""Fuzz target: received psample bytes through the general parser, the fast path and SamplePipeline.

The contract checked (psample.py and pipeline.py docstrings): decode_sample raises
only MalformedMessage; fast_decode either declines (None) or agrees with it; and
feeding any bytes to the pipeline, as one read or as recvmmsg slots, on the Python path
and on the compiled loop (when built), never raises, gives both paths the same datagrams and counts, and ends every netlink message in exactly one count: an exported sample,
a foreign group, a malformed message or another message, as the general parser
judges it.  The datagrams it sends parse with the reference decoder and respect
the datagram size and header length.

    python -m fuzz.run psample --seconds 600
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from itertools import pairwise
from typing import Any

from hwsflow.core import fastpath
from hwsflow.wire import psample, sflow_ref
from hwsflow.wire.sflow import DatagramBuilder
from hwsflow.core.groups import GroupTable
from hwsflow.wire.netlink import HEADERS_LEN, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDR, MalformedMessage, message_extent
from hwsflow.core.pipeline import SamplePipeline

FAMILY = 0x1C
INGRESS_GROUP = 1000
EGRESS_GROUP = 1001
UPTIME_MS = 4242
# choices the input's first two bytes select from (config ranges: header 14..1024, datagram_size 256..65000)
HEADERS = (14, 64, 128, 129, 1024)
DATAGRAM_SIZES = (256, 300, 1400, 9000, 65000)
IFINDEXES = (7, 0x12345, 0xFFFFFF, 0x1000000)  # compact, a 16-bit-truncated IIFINDEX, the limits of compact
SLOT_FILL = 0xA5  # what lies in a recvmmsg slot past the bytes received: must never be read


@dataclass(frozen=True)
class Setup:
    """The pipeline one input runs through, and how its bytes are read."""

    header: int = 128
    datagram_size: int = 1400
    expanded: bool = False
    ipv6: bool = False
    ifindex: int = 0x12345
    slots: int = 1  # >1: the bytes are cut into this many recvmmsg slots


@dataclass
class Counts:
    messages: int = 0
    samples: int = 0
    foreign: int = 0
    malformed: int = 0
    other: int = 0


def make_pipeline(setup: Setup, compiled: bool = False) -> SamplePipeline:
    groups = GroupTable(INGRESS_GROUP)
    groups.bind(setup.ifindex, "p0", "ingress", 10, setup.header)
    groups.bind(setup.ifindex, "p0", "egress", 10, setup.header)
    agent = "2001:db8::1" if setup.ipv6 else "192.0.2.1"
    builder = DatagramBuilder(agent, 7, max(setup.datagram_size, setup.header + 200), setup.expanded)
    pipeline = SamplePipeline(builder, groups, FAMILY, compiled=compiled)
    pipeline.set_links([1, 7, setup.ifindex])
    return pipeline


# ---------------------------------------------------------------- the oracle


def check_decoders(msg: bytes) -> psample.Sample | None:
    """The general parser on one message, and the fast path held to it."""
    try:
        sample = psample.decode_sample(msg)
    except MalformedMessage as err:
        assert str(err), "a MalformedMessage must say what is wrong"
        sample = None
    fast = psample.fast_decode(msg, 0, len(msg), FAMILY)
    if fast is not None:
        assert sample is not None, f"fast path accepted what the general parser rejects: {msg.hex()}"
        group, seq, rate, orig, iif, start, length, _end = fast
        assert (group, seq, rate, orig, iif, msg[start:start + length]) == (
            sample.group, sample.seq, sample.rate, sample.orig_size, sample.iif, sample.data)
    if sample is not None:
        assert len(sample.data) <= len(msg) and 0 <= sample.group <= 0xFFFFFFFF and 0 <= sample.rate <= 0xFFFFFFFF
    return sample


def expect(buf: bytes, bound: set[int], counts: Counts) -> None:
    """Add what feeding buf (one read) must count, as psample's contract and the general parser say."""
    pos = 0
    while pos < len(buf):
        counts.messages += 1
        try:
            msg_type, start, stop = message_extent(buf, pos, len(buf))
        except MalformedMessage:
            counts.malformed += 1  # broken framing: nothing after it in this read can be trusted
            return
        pos = (stop + 3) & ~3
        if msg_type != FAMILY:
            counts.other += msg_type not in (NLMSG_DONE, NLMSG_ERROR)
        elif stop - start < HEADERS_LEN:
            counts.malformed += 1
        elif buf[start + NLMSG_HDR.size] != psample.CMD_SAMPLE:
            counts.other += 1  # group notices
        else:
            sample = check_decoders(buf[start:stop])
            if sample is None:
                counts.malformed += 1
            elif sample.group in bound:
                counts.samples += 1
            else:
                counts.foreign += 1


def cut(buf: bytes, slots: int) -> list[bytes]:
    """buf in `slots` consecutive pieces, as recvmmsg would have received them."""
    bounds = [len(buf) * i // slots for i in range(slots + 1)]
    return [buf[a:b] for a, b in pairwise(bounds)]


def feed(pipeline: SamplePipeline, pieces: list[bytes]) -> None:
    if len(pieces) == 1:
        pipeline.feed(pieces[0], len(pieces[0]), UPTIME_MS)
    else:
        stride = (max(len(piece) for piece in pieces) + 64 + 3) & ~3
        area = bytearray([SLOT_FILL]) * (stride * len(pieces))
        for index, piece in enumerate(pieces):
            area[index * stride:index * stride + len(piece)] = piece
        pipeline.feed_slots(area, [len(piece) for piece in pieces], stride, UPTIME_MS)
    pipeline.flush(UPTIME_MS)


def check_feed(buf: bytes, setup: Setup) -> Counts:
    """Feed buf to a fresh pipeline, cut into setup.slots recvmmsg slots; see check_pieces."""
    return check_pieces(cut(buf, setup.slots), setup)


def check_pieces(pieces: list[bytes], setup: Setup) -> Counts:
    """Feed pieces (one read, or one recvmmsg slot each) to a fresh pipeline: every message is counted
    once, as the general parser judges it, and the datagrams are sound."""
    pipeline = make_pipeline(setup)
    compiled = make_pipeline(setup, compiled=fastpath.available())
    expected = Counts()
    for piece in pieces:
        expect(piece, set(pipeline.groups.by_group), expected)
    feed(pipeline, pieces)
    feed(compiled, pieces)
    got = pipeline.stats
    assert compiled.stats == got, f"compiled loop counted {compiled.stats}, the Python path {got}"
    assert (got.messages, got.samples, got.foreign, got.malformed, got.other) == astuple(expected), \
        f"counted {got}, expected {expected} for {[piece.hex() for piece in pieces]}"
    flows = 0
    datagrams = pipeline.take()
    assert compiled.take() == datagrams, "the compiled loop and the Python path made different datagrams"
    for datagram in datagrams:
        assert len(datagram) <= pipeline.builder.max_size
        for sample in sflow_ref.parse_datagram(datagram)["samples"]:
            assert len(sample["records"][0]["header"]) <= setup.header
            flows += 1
    assert flows == expected.samples
    return expected


# ---------------------------------------------------------------- raw bytes (atheris, hypothesis)


def split_input(data: bytes) -> tuple[Setup, bytes]:
    """The first two bytes choose the setup, the rest is what the socket received."""
    if len(data) < 2:
        return Setup(), data
    a, b = data[0], data[1]
    setup = Setup(header=HEADERS[a % len(HEADERS)], datagram_size=DATAGRAM_SIZES[(a >> 3) % len(DATAGRAM_SIZES)],
                  expanded=bool(b & 1), ipv6=bool(b & 2), ifindex=IFINDEXES[(b >> 2) & 3], slots=1 + (b >> 4) % 4)
    return setup, data[2:]


def setup_prefix(setup: Setup) -> bytes:
    """The two bytes split_input reads back as setup."""
    a = HEADERS.index(setup.header) | DATAGRAM_SIZES.index(setup.datagram_size) << 3
    b = setup.expanded | setup.ipv6 << 1 | IFINDEXES.index(setup.ifindex) << 2 | (setup.slots - 1) << 4
    return bytes([a, b])


def one_input(data: bytes) -> None:
    setup, buf = split_input(data)
    check_feed(buf, setup)


def kernel_sample(**fields: object) -> psample.Sample:
    """What act_sample sends at ingress on current kernels, with fields changed."""
    base: dict[str, Any] = dict(group=INGRESS_GROUP, seq=1, raw_rate=10, orig_size=98, iif=3, data=bytes(range(98)),
                      timestamp=1, proto=0x0800)
    base.update(fields)
    return psample.Sample(**base)


def seeds() -> list[bytes]:
    """Starting inputs: the layouts the kernel sends, so mutations start from realistic messages."""
    build = psample.build_message
    usual = build(kernel_sample(), FAMILY)
    every = build(kernel_sample(group=EGRESS_GROUP, oif=9, out_tc=1, out_tc_occ=5, latency=7, probability=True,
                                cookie=b"hwsflow\x01", tunnel=psample.TunnelKey(id=0, ttl=64)), FAMILY)
    foreign = build(kernel_sample(group=77), FAMILY)
    notice = bytearray(usual)
    notice[NLMSG_HDR.size] = psample.CMD_NEW_GROUP
    done = NLMSG_HDR.pack(NLMSG_HDR.size, NLMSG_DONE, 0, 0, 0)
    big = build(kernel_sample(data=b"\x5a" * 9000, orig_size=9000), FAMILY)
    prefix = setup_prefix(Setup())
    return [prefix + usual, prefix + every, prefix + foreign, prefix + bytes(notice), prefix + done,
            prefix + usual + every + foreign + usual, setup_prefix(Setup(header=1024)) + big + usual,
            setup_prefix(Setup(header=14, datagram_size=256, slots=2)) + usual * 2,
            setup_prefix(Setup(expanded=True, ipv6=True, ifindex=0x1000000, slots=3)) + usual * 3]
