"""From received psample bytes to finished sFlow datagrams: decode, map the group, account, encode.

Pure: the agent hands in what recvmmsg (feed_slots) or recv (feed) filled and
sends what take() hands back.  _pack_chunk is the hot path, written for speed on
purpose: a chunk of messages in the kernel's usual layout (psample.fast_decode's,
checked for the whole chunk at once) goes straight into the encoder's reused
buffer; everything else through the general parser.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Sequence

from hwsflow.wire import psample
from hwsflow.wire.sflow import (
    _COMPACT_INDEX_MAX,
    _FLOW_COMPACT,
    FLOW_SAMPLE,
    MAX_PACKED_HEADER,
    HEADER_PROTOCOL_ETHERNET,
    SAMPLED_HEADER,
    DatagramBuilder,
    encode_queue_records,
)
from hwsflow.core.datasource import DataSource, GroupBinding
from hwsflow.core.groups import GroupTable
from hwsflow.wire.netlink import NLMSG_DONE, NLMSG_ERROR, NLMSG_HDR, MalformedMessage, message_extent

Buffer = bytes | bytearray | memoryview | mmap.mmap  # what a read fills: RecvBuffer's area is an mmap
_MAX_ORIG = 0xFFFFFFFF - 4
FCS_LEN = 4  # psample data has no FCS; sFlow's frame_length counts it, and stripped says so
SOURCE_TYPE_IFINDEX = 0
_FAST_SIZE = psample.FAST_SIZE
_MSG_LEN = psample.FAST_MSG_LEN
CHUNK_MAX = 128  # slots checked and unpacked by one call: RecvBuffer's default batch
# the compact flow sample _pack_chunk packs itself (see DatagramBuilder.add_flow_sample)
_FLOW_SIZE = _FLOW_COMPACT.size
_TWO, _FIVE = struct.Struct("!II"), struct.Struct("!5I")


def _inline_layouts() -> tuple[tuple, ...]:
    """For each header length up to MAX_PACKED_HEADER: (pack_into, sample size, its three runs of constants,
    the header length).

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
                        _TWO.pack(FCS_LEN, hlen), hlen))
    return tuple(layouts)


_INLINE = _inline_layouts()
_NLA_LEN_MAX = 0xFFFF


def _layouts(keep: int) -> tuple:
    """_INLINE's layout for each DATA nla_len, where `keep` header bytes at most are exported: a
    subscript in the hot path instead of the subtraction and the comparison.  None below an
    attribute's 4-byte header (the chunk checks never let those through)."""
    rows = _INLINE[:keep + 1]
    return (None,) * 4 + tuple(rows[min(hlen, keep)] for hlen in range(_NLA_LEN_MAX + 1 - 4))


class _InlineTable(dict):
    """Groups to what _pack_chunk packs them with; a miss gives (None, the group, None, None), so that
    every lookup unpacks the same way."""

    def __missing__(self, group: int) -> tuple[None, int, None, None]:
        return None, group, None, None


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
        # by (stride, slots): psample.chunk_checks and chunk_values
        self._chunk_layouts: dict[tuple[int, int], tuple[list[psample.Check], struct.Struct]] = {}
        self._inline_key: tuple[int, DatagramBuilder] | None = None
        self._inline = _InlineTable()

    def set_links(self, ifindexes: list[int]) -> None:
        """Record the host's ifindexes, to widen 16-bit IIFINDEX values that are unambiguous."""
        by_low: dict[int, list[int]] = {}
        for ifindex in ifindexes:
            by_low.setdefault(ifindex & 0xFFFF, []).append(ifindex)
        self.ifindex_by_low16 = {low: found[0] for low, found in by_low.items() if len(found) == 1}

    def feed(self, buf: Buffer, nbytes: int, uptime_ms: int) -> None:
        """Process every netlink message in buf[:nbytes] (what one recv read)."""
        if len(buf) >= _FAST_SIZE:
            self._feed_chunk(buf, 0, (nbytes,), _FAST_SIZE, uptime_ms)
        else:
            self.stats.messages += self._feed_rest(buf, 0, nbytes, uptime_ms)

    def feed_slots(self, buf: Buffer, lengths: Sequence[int], stride: int,
                   uptime_ms: int) -> None:
        """Process what recvmmsg left in buf: slot i starts at i * stride and holds lengths[i] bytes."""
        count = len(lengths)
        if stride >= _FAST_SIZE and count * stride <= len(buf):
            lengths = tuple(lengths)
            largest = CHUNK_MAX if stride % 4 == 0 else 1  # chunk_checks keeps u32 fields aligned
            first = 0
            while first < count:  # chunks of 128, 64, ... slots: each checked and unpacked at once
                size = min(1 << ((count - first).bit_length() - 1), largest)
                self._feed_chunk(buf, first, lengths[first:first + size], stride, uptime_ms)
                first += size
            return
        messages = 0
        for index, nbytes in enumerate(lengths):  # slots too small for the fast layout
            messages += self._feed_rest(buf, index * stride, index * stride + nbytes, uptime_ms)
        self.stats.messages += messages

    def _feed_chunk(self, buf: Buffer, first: int, lengths: tuple[int, ...], stride: int,
                    uptime_ms: int) -> None:
        """Slots first .. first + len(lengths) - 1: packed inline when every one holds exactly one message
        in the usual layout (as psample's multicast always sends), else halved until the odd one is alone
        and goes through the general parser."""
        count = len(lengths)
        base = first * stride
        layout = self._chunk_layouts.get((stride, count))
        if layout is None:
            layout = self._new_layouts(stride, count)
        checks, values = layout
        # the usual case checked in C for the whole chunk: every fixed field as expected, nlmsg_len the
        # bytes read, and DATA the last attribute, ending the message
        head = memoryview(buf)[base:base + (count - 1) * stride + _FAST_SIZE]
        views = {"B": head, "H": head.cast("H"), "I": head.cast("I")}
        for code, start, stop, step, expected in checks:
            if views[code][start:stop:step] != expected:
                break
        else:
            v = values.unpack_from(buf, base)
            ends = v[6::7]
            if v[0::7] == lengths and (itemgetter(*ends)(_MSG_LEN) if count > 1 else (_MSG_LEN[ends[0]],)) == lengths:
                self._pack_chunk(buf, v, base + _FAST_SIZE, stride, uptime_ms)
                return
        if count == 1:
            self.stats.messages += self._feed_rest(buf, base, base + lengths[0], uptime_ms)
            return
        half = count // 2
        self._feed_chunk(buf, first, lengths[:half], stride, uptime_ms)
        self._feed_chunk(buf, first + half, lengths[half:], stride, uptime_ms)

    def _new_layouts(self, stride: int, count: int) -> tuple[list[psample.Check], struct.Struct]:
        """The checks and values of `count` slots; for a new stride, those of every chunk size at once,
        so that memory does not creep up as rarer batch sizes first arrive."""
        if len(self._chunk_layouts) >= 64:  # strides change only in tests: keep the cache bounded
            self._chunk_layouts.clear()
        sizes = [count] if count == 1 else [1 << i for i in range(1, CHUNK_MAX.bit_length())]
        for size in sizes:
            self._chunk_layouts[(stride, size)] = (psample.chunk_checks(self.family_id, stride, size),
                                                   psample.chunk_values(stride, size))
        return self._chunk_layouts[(stride, count)]

    def _inline_table(self) -> _InlineTable:
        """{group: (binding, its source, the source's ifindex, the layouts by DATA's nla_len)} for the
        bindings whose samples _pack_chunk packs itself: ingress, an ifindex the compact form holds, and a
        header that fits an empty datagram.  Rebuilt when a group is bound or released or the builder
        replaced."""
        key = (self.groups.version, self.builder)
        if self._inline_key != key:
            builder = self.builder
            limit = -1 if builder._expanded else min(
                builder._max - builder._header_len - _FLOW_SIZE, MAX_PACKED_HEADER) & ~3
            packed = [(group, binding) for group, binding in self.groups.by_group.items()
                      if binding.direction == _INGRESS and binding.source.ifindex <= _COMPACT_INDEX_MAX
                      and binding.header <= limit]
            layouts = {keep: _layouts(keep) for keep in {binding.header for _, binding in packed}}
            self._inline = _InlineTable(
                (group, (binding, binding.source, binding.source.ifindex, layouts[binding.header]))
                for group, binding in packed)
            self._inline_key = key
        return self._inline

    def _pack_chunk(self, buf: Buffer, v: tuple[int, ...], data: int, stride: int,
                    uptime_ms: int) -> None:
        """The hot path, over a chunk's FAST_VALUES (seven per slot, as chunk_values reads them) whose
        checks passed; the first slot's DATA starts at buf[data]."""
        # Written for speed on purpose, every Python operation here costs each sample:
        # - the fields come as per-field slices of one unpack, zipped, and the group lookups as one map;
        # - GroupBinding.account inlined for the usual case, the next GROUP_SEQ (anything else calls it);
        # - the usual flow sample (compact, ingress, header fits) packed straight into the builder's open
        #   datagram, as DatagramBuilder.add_flow_sample would, the builder's position kept in locals;
        # anything else goes through _export, with the builder's state synced around it.
        stats = self.stats
        builder = self.builder
        dbuf, dpos, dmax, pending = builder._buf, builder._pos, builder._max, builder.pending
        count = len(v) // 7
        slow = 0  # slots not packed here
        for (binding, source, ifindex, layouts), group_seq, rate, orig, data_nla_len, at in zip(
                map(self._inline_table().__getitem__, v[4::7]), v[5::7], v[2::7], v[3::7], v[6::7],
                range(data, data + count * stride, stride)):
            if binding is None:  # not packed here: `source` is the group
                slow += 1
                builder._pos, builder.pending = dpos, pending
                self._export_group(source, group_seq, rate, orig, v[(at - data) // stride * 7 + 1], buf, at,
                                   data_nla_len - 4, uptime_ms)
                dpos, pending = builder._pos, builder.pending
                continue
            pack, size, head, middle, tail, hlen = layouts[data_nla_len]
            if group_seq - 1 == binding.last_group_seq:  # the next one (None, a wrap to 0: account() knows)
                binding.last_group_seq = group_seq
                flow_seq = source.flow_seq = source.flow_seq + 1
                pool = source.pool = source.pool + rate
            else:
                binding.account(group_seq, rate)
                flow_seq, pool = source.flow_seq, source.pool
            end = dpos + size
            if end > dmax:
                builder._pos, builder.pending = dpos, pending
                builder._finish(uptime_ms)
                dpos, pending = builder._pos, 0
                end = dpos + size
            try:  # counters below 2**32 and an ORIGSIZE not near it need no masks: struct checks
                pack(dbuf, dpos, head, flow_seq, ifindex, rate, pool, source.drops, ifindex, middle, orig + FCS_LEN,
                     tail, buf[at:at + hlen])
            except struct.error:  # repacks all: sFlow's 32-bit fields wrap, frame_length clamps
                pack(dbuf, dpos, head, flow_seq & _U32, ifindex, rate, pool & _U32, source.drops & _U32, ifindex,
                     middle, orig + FCS_LEN if orig <= _MAX_ORIG else _U32, tail, buf[at:at + hlen])
            dpos = end
            pending += 1
        builder._pos, builder.pending = dpos, pending
        stats.messages += count
        stats.samples += count - slow
        stats.inline += count - slow

    def _export_group(self, group: int, group_seq: int, rate: int, orig: int, iif: int,
                      buf: Buffer, data: int, data_len: int, uptime_ms: int) -> None:
        """A usual-layout sample _pack_chunk does not pack: a foreign group's (counted), or the general way."""
        binding = self.groups.by_group.get(group)
        if binding is None:
            self.stats.foreign += 1
        else:
            self._export(binding, uptime_ms, group_seq, rate, orig, iif, buf[data:data + min(data_len, binding.header)])

    def _feed_rest(self, buf: Buffer, pos: int, end: int, uptime_ms: int) -> int:
        """Every message of the read in buf[pos:end] through the general parser; returns how many there were."""
        messages, start = 0, pos
        while pos < end:
            pos = self._feed_general(buf, pos, end, uptime_ms, start)
            messages += 1
        return messages

    def _feed_general(self, buf: Buffer, pos: int, nbytes: int, uptime_ms: int,
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
