"""From received psample bytes to finished sFlow datagrams: decode, map the group, account, encode.

Pure: the agent hands in what recv_into() filled and sends what take() hands
back.  feed() is the hot path, written for speed on purpose: the kernel's usual
layout is checked with psample.fast_decode's tests, inlined, and goes straight
into the encoder's reused buffer; everything else through the general parser.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Sequence

from hwsflow import psample
from hwsflow.encoder import (
    _COMPACT_INDEX_MAX,
    _FLOW_COMPACT,
    COMPACT_FLOW_PACKERS,
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
_CMD_SAMPLE = psample.CMD_SAMPLE
_ATTR_DATA = psample.ATTR_DATA
# the compact flow sample feed_slots packs itself (see DatagramBuilder.add_flow_sample)
_FLOW_SIZE = _FLOW_COMPACT.size
_FLOW_SAMPLE, _SAMPLED_HEADER, _ETHERNET = FLOW_SAMPLE, SAMPLED_HEADER, HEADER_PROTOCOL_ETHERNET
_INGRESS = "ingress"
_U32 = 0xFFFFFFFF


@dataclass(slots=True)
class PipelineStats:
    messages: int = 0
    samples: int = 0  # samples of hwsflow's groups, exported
    foreign: int = 0  # samples of groups that are not hwsflow's
    malformed: int = 0  # messages that failed to decode, skipped
    other: int = 0  # non-sample messages (other families, group notices)


class SamplePipeline:
    """Owns the decode -> map -> account -> encode path for one psample socket."""

    def __init__(self, builder: DatagramBuilder, groups: GroupTable, family_id: int) -> None:
        self.builder = builder
        self.groups = groups
        self.family_id = family_id
        self.stats = PipelineStats()
        # psample's IIFINDEX is 16 bits: the full ifindex of a port whose low 16 bits are unique
        self.ifindex_by_low16: dict[int, int] = {}

    def set_links(self, ifindexes: list[int]) -> None:
        """Record the host's ifindexes, to widen 16-bit IIFINDEX values that are unambiguous."""
        by_low: dict[int, list[int]] = {}
        for ifindex in ifindexes:
            by_low.setdefault(ifindex & 0xFFFF, []).append(ifindex)
        self.ifindex_by_low16 = {low: found[0] for low, found in by_low.items() if len(found) == 1}

    def feed(self, buf: bytes | bytearray | memoryview, nbytes: int, uptime_ms: int) -> None:
        """Process every netlink message in buf[:nbytes]."""
        self.feed_slots(buf, (nbytes,), 0, uptime_ms)

    def feed_slots(self, buf: bytes | bytearray | memoryview, lengths: Sequence[int], stride: int,
                   uptime_ms: int) -> None:
        """Process what recvmmsg left in buf: slot i starts at i * stride and holds lengths[i] bytes."""
        # Written for speed on purpose, every Python operation here costs each sample:
        # - psample.fast_decode's checks inlined (tests hold the two and the general parser identical);
        # - GroupBinding.account inlined for the usual case, the next GROUP_SEQ (anything else calls it);
        # - the usual flow sample (compact, ingress, header fits) packed straight into the builder's open
        #   datagram, as DatagramBuilder.add_flow_sample would, the builder's position kept in locals;
        # anything else goes through _export or _feed_general, with the builder's state synced around.
        unpack, size, headers, signature = psample.FAST_UNPACK, psample.FAST_SIZE, psample.FAST_HEADERS, \
            psample.FAST_SIGNATURE
        proto_header = psample.FAST_PROTO
        by_group = self.groups.by_group
        family_id = self.family_id
        stats = self.stats
        builder = self.builder
        dbuf, dpos, dmax, pending = builder._buf, builder._pos, builder._max, builder.pending
        room = dmax - builder._header_len  # what one sample may take in an empty datagram
        compact = not builder._expanded
        packers = COMPACT_FLOW_PACKERS
        others = samples = slot = 0  # messages: the samples packed here plus all the others
        for nbytes in lengths:
            pos = slot
            end = slot + nbytes
            slot += stride
            while pos < end:
                if end - pos >= size:
                    t = unpack(buf, pos)
                    msg_end = pos + t[0]
                    data_len = (t[15] & 0xFFFF) - 4
                    data_start = pos + size
                    if (t[headers] == signature and t[14] == proto_header and t[1] == family_id
                            and t[2] == _CMD_SAMPLE and t[15] >> 16 == _ATTR_DATA and msg_end <= end
                            and data_len >= 0 and data_start + ((data_len + 3) & ~3) == msg_end):
                        pos = (msg_end + 3) & ~3
                        binding = by_group.get(t[10])
                        if binding is None:
                            stats.foreign += 1
                            others += 1
                            continue
                        keep = binding.header
                        hlen = data_len if data_len < keep else keep
                        padded = (hlen + 3) & ~3
                        source = binding.source
                        ifindex = source.ifindex
                        if (binding.direction != _INGRESS or not compact or ifindex > _COMPACT_INDEX_MAX
                                or _FLOW_SIZE + padded > room or padded > MAX_PACKED_HEADER):
                            builder._pos, builder.pending = dpos, pending
                            self._export(binding, uptime_ms, t[12], t[6], t[8], t[4],
                                         buf[data_start:data_start + hlen])
                            dpos, pending = builder._pos, builder.pending
                            others += 1
                            continue
                        group_seq, rate = t[12], t[6]
                        last = binding.last_group_seq
                        if last is not None and group_seq == ((last + 1) & _U32):
                            binding.last_group_seq = group_seq
                            binding.samples += 1
                            source.samples += 1
                            source.flow_seq += 1
                            source.pool += rate
                        else:
                            binding.account(group_seq, rate)
                        sample_size = _FLOW_SIZE + padded
                        if dpos + sample_size > dmax:
                            builder._pos, builder.pending = dpos, pending
                            builder._finish(uptime_ms)
                            dpos, pending = builder._pos, 0
                        header = buf[data_start:data_start + hlen]
                        try:  # counters below 2**32 and an ORIGSIZE not near it need no masks: struct checks
                            packers[padded >> 2](
                                dbuf, dpos, _FLOW_SAMPLE, sample_size - 8, source.flow_seq, ifindex, rate,
                                source.pool, source.drops, ifindex, 0, 1, _SAMPLED_HEADER, 16 + padded, _ETHERNET,
                                t[8] + FCS_LEN, FCS_LEN, hlen, header)
                        except struct.error:  # repacks all: sFlow's 32-bit fields wrap, frame_length clamps
                            orig = t[8]
                            packers[padded >> 2](
                                dbuf, dpos, _FLOW_SAMPLE, sample_size - 8, source.flow_seq & _U32, ifindex, rate,
                                source.pool & _U32, source.drops & _U32, ifindex, 0, 1, _SAMPLED_HEADER, 16 + padded,
                                _ETHERNET, orig + FCS_LEN if orig <= _MAX_ORIG else _U32, FCS_LEN, hlen, header)
                        dpos += sample_size
                        pending += 1
                        samples += 1
                        continue
                builder._pos, builder.pending = dpos, pending
                pos = self._feed_general(buf, pos, end, uptime_ms)
                dpos, pending = builder._pos, builder.pending
                others += 1
        builder._pos, builder.pending = dpos, pending
        stats.messages += samples + others
        stats.samples += samples

    def _feed_general(self, buf: bytes | bytearray | memoryview, pos: int, nbytes: int, uptime_ms: int) -> int:
        """The slow path for one message; returns where the next message starts."""
        try:
            msg_type, start, stop = message_extent(buf, pos, nbytes)
        except MalformedMessage:
            self.stats.malformed += 1
            return nbytes  # the framing itself is broken: nothing after this point can be trusted
        next_pos = (stop + 3) & ~3
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
