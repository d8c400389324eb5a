"""From received psample bytes to finished sFlow datagrams: decode, map the group, account, encode.

Pure: the agent hands in what recvmmsg (feed_slots) or recv (feed) filled and
sends what take() hands back.  _feed_heads is the hot path, written for speed on
purpose: the kernel's usual layout is checked with psample.fast_decode's tests,
inlined, and goes straight into the encoder's reused buffer; everything else
through the general parser.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from hwsflow import psample
from hwsflow.encoder import (
    _COMPACT_INDEX_MAX,
    _FLOW_COMPACT,
    FLOW_SAMPLE,
    MAX_PACKED_HEADER,
    HEADER_PROTOCOL_ETHERNET,
    SAMPLED_HEADER,
    DatagramBuilder,
    encode_queue_records,
)
from hwsflow.datasource import GroupBinding
from hwsflow.groups import GroupTable
from hwsflow.netlink import NLMSG_DONE, NLMSG_ERROR, NLMSG_HDR, MalformedMessage, message_extent

_MAX_ORIG = 0xFFFFFFFF - 4
FCS_LEN = 4  # psample data has no FCS; sFlow's frame_length counts it, and stripped says so
SOURCE_TYPE_IFINDEX = 0
_FAST_SIZE = psample.FAST_SIZE
_FAST_CHECK, _FAST_VALUES = psample.FAST_CHECK.unpack_from, psample.FAST_VALUES.unpack_from
# the compact flow sample _feed_heads packs itself (see DatagramBuilder.add_flow_sample)
_FLOW_SIZE = _FLOW_COMPACT.size
_TWO, _FIVE = struct.Struct("!II"), struct.Struct("!5I")


def _inline_layouts() -> tuple[tuple, ...]:
    """For each header length up to MAX_PACKED_HEADER: (pack_into, sample size, its three runs of constants).

    The compact ingress flow sample with one sampled-header record, as add_flow_sample writes it, in
    one pack whose constant fields come pre-packed: (tag, length), seq, source_id, rate, pool, drops,
    input, (output 0, 1 record, record tag, record length, Ethernet), frame_length, (stripped, header
    length), the header bytes (the "s" zero-fills their XDR padding).  Eleven arguments instead of
    nineteen: each one costs every sample.
    """
    packers = {padded: struct.Struct(f"!8s6I20sI8s{padded}s").pack_into
               for padded in range(0, MAX_PACKED_HEADER + 1, 4)}
    layouts = []
    for hlen in range(MAX_PACKED_HEADER + 1):
        padded = (hlen + 3) & ~3
        size = _FLOW_SIZE + padded
        layouts.append((packers[padded], size, _TWO.pack(FLOW_SAMPLE, size - 8),
                        _FIVE.pack(0, 1, SAMPLED_HEADER, 16 + padded, HEADER_PROTOCOL_ETHERNET),
                        _TWO.pack(FCS_LEN, hlen)))
    return tuple(layouts)


_INLINE = _inline_layouts()
_INGRESS = "ingress"
_U32 = 0xFFFFFFFF


@dataclass(slots=True)
class PipelineStats:
    messages: int = 0
    samples: int = 0  # samples of hwsflow's groups, exported
    foreign: int = 0  # samples of groups that are not hwsflow's
    malformed: int = 0  # messages that failed to decode, skipped
    other: int = 0  # non-sample messages (other families, group notices)
    # of `samples`, those the inlined fast path packed: a diagnostic (is the kernel's layout the usual
    # one?), left out of equality so that the fast and the general path compare equal
    inline: int = field(default=0, compare=False)


class SamplePipeline:
    """Owns the decode -> map -> account -> encode path for one psample socket."""

    def __init__(self, builder: DatagramBuilder, groups: GroupTable, family_id: int) -> None:
        self.builder = builder
        self.groups = groups
        self.family_id = family_id
        self.stats = PipelineStats()
        # psample's IIFINDEX is 16 bits: the full ifindex of a port whose low 16 bits are unique
        self.ifindex_by_low16: dict[int, int] = {}
        self._slot_structs: dict[int, tuple[struct.Struct, struct.Struct]] = {}  # by recvmmsg stride

    def set_links(self, ifindexes: list[int]) -> None:
        """Record the host's ifindexes, to widen 16-bit IIFINDEX values that are unambiguous."""
        by_low: dict[int, list[int]] = {}
        for ifindex in ifindexes:
            by_low.setdefault(ifindex & 0xFFFF, []).append(ifindex)
        self.ifindex_by_low16 = {low: found[0] for low, found in by_low.items() if len(found) == 1}

    def feed(self, buf: bytes | bytearray | memoryview, nbytes: int, uptime_ms: int) -> None:
        """Process every netlink message in buf[:nbytes] (what one recv read)."""
        if len(buf) >= _FAST_SIZE:
            self._feed_heads(buf, ((nbytes, _FAST_CHECK(buf, 0), _FAST_VALUES(buf, 0), _FAST_SIZE),), 1, uptime_ms)
        else:
            self.stats.messages += self._feed_rest(buf, 0, nbytes, uptime_ms)

    def feed_slots(self, buf: bytes | bytearray | memoryview, lengths: Sequence[int], stride: int,
                   uptime_ms: int) -> None:
        """Process what recvmmsg left in buf: slot i starts at i * stride and holds lengths[i] bytes."""
        if stride >= _FAST_SIZE and len(buf) % stride == 0 and len(lengths) * stride <= len(buf):
            # one iterator reads the head of every slot in turn: no offset arithmetic, no call per message
            structs = self._slot_structs.get(stride)
            if structs is None:
                structs = self._slot_structs[stride] = psample.slot_structs(stride)
            checks, values = structs
            self._feed_heads(buf, zip(lengths, checks.iter_unpack(buf), values.iter_unpack(buf),
                                      range(_FAST_SIZE, len(buf) + _FAST_SIZE, stride)), len(lengths), uptime_ms)
            return
        messages = 0
        for index, nbytes in enumerate(lengths):  # slots too small for the fast layout
            messages += self._feed_rest(buf, index * stride, index * stride + nbytes, uptime_ms)
        self.stats.messages += messages

    def _feed_heads(self, buf: bytes | bytearray | memoryview, heads: Iterable[tuple[int, tuple, tuple, int]],
                    heads_count: int, uptime_ms: int) -> None:
        """The hot path, over (bytes read, FAST_CHECK and FAST_VALUES of its head, where DATA would start)
        for each read."""
        # Written for speed on purpose, every Python operation here costs each sample:
        # - psample.fast_decode's checks inlined (tests hold the two and the general parser identical),
        #   and only for a slot holding exactly one message, as psample's multicast always does;
        # - GroupBinding.account inlined for the usual case, the next GROUP_SEQ (anything else calls it);
        # - the usual flow sample (compact, ingress, header fits) packed straight into the builder's open
        #   datagram, as DatagramBuilder.add_flow_sample would, the builder's position kept in locals;
        # anything else goes through _export or _feed_rest, with the builder's state synced around.
        signature, msg_len = psample.fast_signature(self.family_id), psample.FAST_MSG_LEN
        by_group = self.groups.by_group
        stats = self.stats
        builder = self.builder
        dbuf, dpos, dmax, pending = builder._buf, builder._pos, builder._max, builder.pending
        # the longest header packed here: its sample must fit an empty datagram (expanded: none is)
        limit = -1 if builder._expanded else min(dmax - builder._header_len - _FLOW_SIZE, MAX_PACKED_HEADER) & ~3
        by_hlen = _INLINE
        slow = others = 0  # slots not packed here, and the messages they held
        for nbytes, fixed, (length, iif, rate, orig, group, group_seq, data_nla_len), data in heads:
            if fixed != signature or length != nbytes or msg_len[data_nla_len] != nbytes:
                builder._pos, builder.pending = dpos, pending
                others += self._feed_rest(buf, data - _FAST_SIZE, data - _FAST_SIZE + nbytes, uptime_ms)
                dpos, pending = builder._pos, builder.pending
                slow += 1
                continue
            binding = by_group.get(group)
            if binding is None:
                stats.foreign += 1
                slow += 1
                others += 1
                continue
            keep = binding.header
            hlen = data_nla_len - 4
            if hlen > keep:
                hlen = keep
            source = binding.source
            ifindex = source.ifindex
            if hlen > limit or ifindex > _COMPACT_INDEX_MAX or binding.direction != _INGRESS:
                builder._pos, builder.pending = dpos, pending
                self._export(binding, uptime_ms, group_seq, rate, orig, iif, buf[data:data + hlen])
                dpos, pending = builder._pos, builder.pending
                slow += 1
                others += 1
                continue
            if group_seq - 1 == binding.last_group_seq:  # the next one (None, a wrap to 0: account() knows)
                binding.last_group_seq = group_seq
                binding.samples += 1
                source.samples += 1
                flow_seq = source.flow_seq = source.flow_seq + 1
                pool = source.pool = source.pool + rate
            else:
                binding.account(group_seq, rate)
                flow_seq, pool = source.flow_seq, source.pool
            pack, size, head, middle, tail = by_hlen[hlen]
            if dpos + size > dmax:
                builder._pos, builder.pending = dpos, pending
                builder._finish(uptime_ms)
                dpos, pending = builder._pos, 0
            try:  # counters below 2**32 and an ORIGSIZE not near it need no masks: struct checks
                pack(dbuf, dpos, head, flow_seq, ifindex, rate, pool, source.drops, ifindex, middle, orig + FCS_LEN,
                     tail, buf[data:data + hlen])
            except struct.error:  # repacks all: sFlow's 32-bit fields wrap, frame_length clamps
                pack(dbuf, dpos, head, flow_seq & _U32, ifindex, rate, pool & _U32, source.drops & _U32, ifindex,
                     middle, orig + FCS_LEN if orig <= _MAX_ORIG else _U32, tail, buf[data:data + hlen])
            dpos += size
            pending += 1
        builder._pos, builder.pending = dpos, pending
        stats.messages += heads_count - slow + others
        stats.samples += heads_count - slow
        stats.inline += heads_count - slow

    def _feed_rest(self, buf: bytes | bytearray | memoryview, pos: int, end: int, uptime_ms: int) -> int:
        """Every message of the read in buf[pos:end] through the general parser; returns how many there were."""
        messages, start = 0, pos
        while pos < end:
            pos = self._feed_general(buf, pos, end, uptime_ms, start)
            messages += 1
        return messages

    def _feed_general(self, buf: bytes | bytearray | memoryview, pos: int, nbytes: int, uptime_ms: int,
                      origin: int = 0) -> int:
        """The slow path for one message; returns where the next message starts.

        Netlink aligns each message to 4 bytes from the start of the read, which is `origin` in buf
        (a recvmmsg slot's start), not necessarily a multiple of 4.
        """
        try:
            msg_type, start, stop = message_extent(buf, pos, nbytes)
        except MalformedMessage:
            self.stats.malformed += 1
            return nbytes  # the framing itself is broken: nothing after this point can be trusted
        next_pos = origin + ((stop - origin + 3) & ~3)
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

    def add_sample(self, sample: psample.Sample, uptime_ms: int) -> None:
        """Export one decoded sample (the general path; same result as the fast path).

        Samples carrying psample's queue metadata come this way: the kernel puts OUT_TC, OUT_TC_OCC
        and LATENCY between GROUP_SEQ and TIMESTAMP, so they never match the fast layout, and only
        hardware drivers (mlxsw) supply them, never act_sample's software path.
        """
        binding = self.groups.by_group.get(sample.group)
        if binding is None:
            self.stats.foreign += 1
            return
        # psample's queue metadata (OUT_TC, OUT_TC_OCC, LATENCY), where the driver supplied it
        extra, extra_count = encode_queue_records(sample.out_tc, sample.out_tc_occ, sample.latency)
        self._export(binding, uptime_ms, sample.seq, sample.rate, sample.orig_size, sample.iif, sample.data,
                     extra, extra_count)

    def _export(self, binding: GroupBinding, uptime_ms: int, group_seq: int, rate: int, orig_size: int,
                iif: int, data: bytes | memoryview, extra: bytes = b"", extra_count: int = 0) -> None:
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
