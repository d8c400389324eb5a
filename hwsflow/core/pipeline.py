"""From received psample bytes to finished sFlow datagrams: decode, map the group, account, encode.

Pure: the agent hands in what recvmmsg (feed_slots) or recv (feed) filled and
sends what take() hands back.  Two paths lead through it, held equal by tests:
- the compiled loop (hwsflow/core/_fastpath.c, when built and not turned off): it takes the run of
  slots that each hold one message in the kernel's usual layout (psample.USUAL_FIXED) of a group
  packed in the compact form, and packs them into the builder's open datagram;
- this module's Python code, the reference: every slot the compiled loop leaves (or every slot,
  without it), one message at a time, through psample.fast_decode or the general parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hwsflow.wire import psample
from hwsflow.wire.sflow import (
    DATAGRAM_TAIL_AT,
    FLOW_COMPACT,
    FLOW_COMPACT_AT,
    FLOW_SAMPLE,
    HEADER_PROTOCOL_ETHERNET,
    SAMPLED_HEADER,
    DatagramBuilder,
    encode_queue_records,
)
from hwsflow.core import fastpath
from hwsflow.core.datasource import GroupBinding
from hwsflow.core.groups import GroupTable
from hwsflow.core.tunnels import tunnel_records
from hwsflow.wire.netlink import NLMSG_DONE, NLMSG_ERROR, NLMSG_HDR, Buffer, MalformedMessage, message_extent

if TYPE_CHECKING:
    from hwsflow.core.fastpath import Loop, Outbox

_MAX_ORIG = 0xFFFFFFFF - 4
FCS_LEN = 4  # psample data has no FCS; sFlow's frame_length counts it, and stripped says so
SOURCE_TYPE_IFINDEX = 0


CompiledLayout = tuple[tuple[tuple[int, int, int], ...], dict[str, tuple[int, int]], int, dict[str, int], int,
                       dict[str, int], dict[str, int]]


def new_compiled_loop_layout(family_id: int) -> CompiledLayout:
    """What the compiled loop is given at start, from the one declaration of each layout: the usual psample
    message's checks and fields, the compact flow sample's offsets, size and constant fields, and where the datagram
    header's sequence, uptime and sample count go (from the builder's tail_at)."""
    # the constant fields: an ingress sample with one raw Ethernet header record
    constants = {"tag": FLOW_SAMPLE, "output": 0, "records": 1, "record_tag": SAMPLED_HEADER,
                 "protocol": HEADER_PROTOCOL_ETHERNET, "stripped": FCS_LEN}
    return (psample.usual_checks(family_id), psample.USUAL_FIELDS, psample.USUAL_SIZE, FLOW_COMPACT_AT,
            FLOW_COMPACT.size, constants, DATAGRAM_TAIL_AT)


def new_compiled_loop(family_id: int) -> Loop:
    """The compiled loop for this family's messages."""
    loop: Loop = fastpath.module().Loop(*new_compiled_loop_layout(family_id))
    return loop


@dataclass(slots=True)
class PipelineStats:
    messages: int = 0
    samples: int = 0  # samples of hwsflow's groups, exported
    foreign: int = 0  # samples of groups that are not hwsflow's
    malformed: int = 0  # messages that failed to decode, skipped
    other: int = 0  # non-sample messages (other families, group notices)
    # of `samples`, those the compiled loop packed: a diagnostic (is the kernel's layout the usual one?),
    # left out of equality so that the compiled and the Python path compare equal
    compiled: int = field(default=0, compare=False)


class SamplePipeline:
    """Owns the decode -> map -> account -> encode path for one psample socket.

    compiled: None takes the compiled loop when fastpath.available() says it runs; False is the
    Python path alone; True insists on the compiled loop (ImportError without it).
    """

    def __init__(self, builder: DatagramBuilder, groups: GroupTable, family_id: int,
                 compiled: bool | None = None) -> None:
        self.builder = builder
        self.groups = groups
        self.family_id = family_id
        self.stats = PipelineStats()
        # psample's IIFINDEX is 16 bits: the full ifindex of a port whose low 16 bits are unique
        self.ifindex_by_low16: dict[int, int] = {}
        use = fastpath.available() if compiled is None else compiled
        self._loop = new_compiled_loop(family_id) if use else None
        # the compiled loop finishes datagrams into it, with no Python call per datagram, and the collectors
        # send from it with one sendmmsg each (CollectorSet.send_loaded); None on the Python path (take())
        self.outbox: Outbox | None = fastpath.module().Outbox() if use else None
        if self.outbox is not None:
            builder.set_outbox(self.outbox)

    @property
    def path(self) -> str:
        """Which path packs the usual samples: "compiled" or "python"."""
        return "compiled" if self._loop is not None else "python"

    def set_builder(self, builder: DatagramBuilder) -> None:
        """Pack into builder from now on (a reload's new datagram settings)."""
        self.builder = builder
        if self.outbox is not None:
            builder.set_outbox(self.outbox)

    def set_links(self, ifindexes: list[int]) -> None:
        """Record the host's ifindexes, to widen 16-bit IIFINDEX values that are unambiguous."""
        by_low: dict[int, list[int]] = {}
        for ifindex in ifindexes:
            by_low.setdefault(ifindex & 0xFFFF, []).append(ifindex)
        self.ifindex_by_low16 = {low: found[0] for low, found in by_low.items() if len(found) == 1}

    def feed(self, buf: Buffer, nbytes: int, uptime_ms: int) -> None:
        """Process every netlink message in buf[:nbytes] (what one recv read)."""
        self.feed_slots(buf, (nbytes,), max(nbytes, 1), uptime_ms)

    def feed_slots(self, buf: Buffer, lengths: Sequence[int], stride: int, uptime_ms: int) -> None:
        """Process what recvmmsg left in buf: slot i starts at i * stride and holds lengths[i] bytes."""
        count = len(lengths)
        index = 0
        while index < count:
            if self._loop is not None and stride > 0:  # stride 0 (every slot at 0) is the Python path's alone
                index = self._run_compiled(buf, lengths, stride, index, uptime_ms)
                if index == count:
                    return
            start = index * stride  # a slot the compiled loop left, or every slot without it
            self.stats.messages += self._feed_rest(buf, start, start + lengths[index], uptime_ms)
            index += 1

    def _run_compiled(self, buf: Buffer, lengths: Sequence[int], stride: int, first: int,
                      uptime_ms: int) -> int:
        """Slots from first on through the compiled loop; returns the first slot it left to Python."""
        assert self._loop is not None
        stop, packed = self._loop.run(buf, lengths, stride, first, uptime_ms, self.builder, self.groups.by_group)
        stats = self.stats
        stats.messages += packed
        stats.samples += packed
        stats.compiled += packed
        return stop

    def _feed_rest(self, buf: Buffer, pos: int, end: int, uptime_ms: int) -> int:
        """Every message of the read in buf[pos:end], the usual layout read by psample.fast_decode and the
        rest by the general parser; returns how many there were."""
        messages, start = 0, pos
        while pos < end:
            pos = self._feed_general(buf, pos, end, uptime_ms, start)
            messages += 1
        return messages

    def _feed_general(self, buf: Buffer, pos: int, nbytes: int, uptime_ms: int,
                      origin: int = 0) -> int:
        """One message; returns where the next message starts.

        Netlink aligns each message to 4 bytes from the start of the read, which is `origin` in buf
        (a recvmmsg slot's start), not necessarily a multiple of 4.
        """
        try:
            msg_type, start, stop = message_extent(buf, pos, nbytes)
        except MalformedMessage:
            self.stats.malformed += 1
            return nbytes  # the framing itself is broken: nothing after this point can be trusted
        next_pos = origin + ((stop - origin + 3) & ~3)
        usual = psample.fast_decode(buf, start, stop, self.family_id)
        if usual is not None:
            self._export_usual(usual, buf, uptime_ms)
            return next_pos
        if msg_type != self.family_id:
            if msg_type not in (NLMSG_DONE, NLMSG_ERROR):
                self.stats.other += 1
            return next_pos
        if stop - start < NLMSG_HDR.size + 4:
            self.stats.malformed += 1
            return next_pos
        if buf[start + NLMSG_HDR.size] != psample.CMD_SAMPLE:
            self.stats.other += 1  # NEW_GROUP / DEL_GROUP notices
            return next_pos
        try:
            sample = psample.decode_sample(buf, start, stop)
        except MalformedMessage:
            self.stats.malformed += 1
            return next_pos
        self.add_sample(sample, uptime_ms)
        return next_pos

    def _export_usual(self, usual: psample.UsualSample, buf: Buffer, uptime_ms: int) -> None:
        """A sample in the usual layout: no queue metadata, its DATA where fast_decode found it."""
        binding = self.groups.by_group.get(usual.group)
        if binding is None:
            self.stats.foreign += 1
            return
        data = buf[usual.data_start:usual.data_start + min(usual.data_len, binding.header)]
        self._export(binding, uptime_ms, usual.seq, usual.rate, usual.orig_size, usual.iif, data)

    def add_sample(self, sample: psample.Sample, uptime_ms: int) -> None:
        """Export one decoded sample (the general path; same result as the fast path).

        Samples carrying psample's queue metadata come this way: the kernel puts OUT_TC, OUT_TC_OCC
        and LATENCY between GROUP_SEQ and TIMESTAMP, so they never match the fast layout, and only
        hardware drivers (mlxsw) supply them, never act_sample's software path.
        """
        binding = self.groups.get(sample.group)
        if binding is None:
            self.stats.foreign += 1
            return
        # psample's queue metadata (OUT_TC, OUT_TC_OCC, LATENCY), where the driver supplied it
        extra, extra_count = encode_queue_records(sample.out_tc, sample.out_tc_occ, sample.latency)
        if sample.tunnel is not None:  # TUNNEL follows DATA: these samples always come this way
            tunnel, tunnel_count = tunnel_records(sample.tunnel, binding.direction == "ingress")
            extra, extra_count = tunnel + extra, tunnel_count + extra_count
        self._export(binding, uptime_ms, sample.seq, sample.rate, sample.orig_size, sample.iif, sample.data,
                     extra, extra_count)

    def _export(self, binding: GroupBinding, uptime_ms: int, group_seq: int, rate: int, orig_size: int,
                iif: int, data: bytes | bytearray | memoryview, extra: bytes = b"", extra_count: int = 0) -> None:
        binding.account(group_seq, rate)
        source = binding.source
        self.stats.samples += 1
        if binding.direction == "ingress":
            input_if, output_if = source.ifindex, 0
        else:
            input_if, output_if = self.ifindex_by_low16.get(iif, 0), source.ifindex
        self.builder.add_flow_sample(
            uptime_ms, source.flow_seq, SOURCE_TYPE_IFINDEX, source.ifindex, rate,
            source.pool, source.drops, input_if, output_if,
            # a hostile ORIGSIZE near 2**32 must not overflow sFlow's 32-bit frame_length
            orig_size + FCS_LEN if orig_size <= _MAX_ORIG else 0xFFFFFFFF, FCS_LEN, data[: binding.header],
            extra, extra_count,
        )

    def flush(self, uptime_ms: int) -> None:
        self.builder.flush(uptime_ms)

    def take(self) -> list[bytes]:
        return self.builder.take()
