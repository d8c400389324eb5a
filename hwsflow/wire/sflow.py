"""sFlow v5 datagram builder: the agent's hot path.

One DatagramBuilder owns a reused buffer; the caller adds samples, then takes
the finished datagrams and sends them. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Protocol

from hwsflow.core.model import HEADER_MAX as MAX_PACKED_HEADER  # the pipeline's fast path packs up to this many bytes
from hwsflow.core.model import U32_MAX as _U32_MASK

# Precompiled Structs packed into one reused bytearray: no per-sample objects beyond the finished
# datagram's bytes.

_U64_MASK = 0xFFFFFFFFFFFFFFFF
COMPACT_INDEX_MAX = 0xFFFFFF  # 24-bit source_id index
_COMPACT_IF_MAX = 0x3FFFFFFF  # 30-bit interface value (top 2 bits: format)

# sample_data formats (enterprise 0)
FLOW_SAMPLE = 1
COUNTERS_SAMPLE = 2
FLOW_SAMPLE_EXPANDED = 3
COUNTERS_SAMPLE_EXPANDED = 4
# record formats (enterprise 0)
SAMPLED_HEADER = 1
IF_COUNTERS = 1
ETHERNET_COUNTERS = 2
PORT_NAME = 1005
HEADER_PROTOCOL_ETHERNET = 1
# the sFlow transit delay and queue extension, as host-sflow's src/sflow/sflow.h declares it
EGRESS_QUEUE = 1036  # extended_egress_queue { unsigned int queue; }
TRANSIT_DELAY = 1039  # extended_transit { unsigned int delay; } ns, 0xFFFFFFFF when larger
QUEUE_DEPTH = 1040  # extended_queue { unsigned int depth; } bytes

# version, agent address type (the address itself follows separately)
_DGRAM_START = struct.Struct("!II")
# sub_agent_id is fixed per builder; sequence, uptime, count go after it, at the builder's tail_at: the one
# declaration of the datagram header's tail, which _finish packs and the compiled loop takes at start
DATAGRAM_TAIL_FIELDS = ("sequence", "uptime", "samples")
_DGRAM_TAIL = struct.Struct("!" + "I" * len(DATAGRAM_TAIL_FIELDS))
DATAGRAM_TAIL_AT = {name: 4 * index for index, name in enumerate(DATAGRAM_TAIL_FIELDS)}  # from tail_at
_U32 = struct.Struct("!I")

# The compact flow sample with one sampled-header record (sample tag and length, flow_sample's fields, then
# the record's tag, length and fixed fields; the header bytes follow): the one declaration of its layout.
# add_flow_sample packs it through FLOW_COMPACT, the pipeline's reference path names its fields, and the
# compiled loop (hwsflow/core/_fastpath.c) takes every field's offset from FLOW_COMPACT_AT at start.
FLOW_COMPACT_FIELDS = (
    "tag", "length", "sequence", "source_id", "rate", "pool", "drops", "input", "output", "records",
    "record_tag", "record_length", "protocol", "frame_length", "stripped", "header_length",
)
FLOW_COMPACT = struct.Struct("!" + "I" * len(FLOW_COMPACT_FIELDS))
FLOW_COMPACT_AT = {name: 4 * index for index, name in enumerate(FLOW_COMPACT_FIELDS)}  # byte offsets
# flow_sample_expanded: as above but source_id is (type, index) and each
# interface is (format, value)
_FLOW_EXPANDED = struct.Struct("!19I")
_FLOW_COMPACT_PACK, _FLOW_COMPACT_SIZE = FLOW_COMPACT.pack_into, FLOW_COMPACT.size
_FLOW_EXPANDED_PACK, _FLOW_EXPANDED_SIZE = _FLOW_EXPANDED.pack_into, _FLOW_EXPANDED.size
# counters_sample: tag, length, seq, source_id, nrecords
_COUNTERS_COMPACT = struct.Struct("!5I")
# counters_sample_expanded: tag, length, seq, type, index, nrecords
_COUNTERS_EXPANDED = struct.Struct("!6I")

_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by len % 4

_IF_COUNTERS = struct.Struct("!IIIIQIIQIIIIIIQIIIIII")  # tag + length + 88
_ETHERNET_COUNTERS = struct.Struct("!15I")  # tag + length + 13 counters
_PORT_NAME_MAX = 255  # string name<255>
_U32_RECORD = struct.Struct("!III")  # tag, length (4), one unsigned int
_U32_RECORD_PACK = _U32_RECORD.pack


class Outbox(Protocol):
    """Where finished datagrams go instead of take()'s list: the compiled loop's (core._fastpath.Outbox),
    which it finishes datagrams into itself and the collectors send from with one sendmmsg."""

    def append(self, datagram: bytes | bytearray | memoryview) -> None: ...

    def datagrams(self) -> list[bytes]: ...

    def clear(self) -> None: ...


class DatagramBuilder:
    """Packs samples into sFlow v5 datagrams no longer than max_size bytes.

    add_flow_sample and add_counter_sample encode whole samples.  A caller that packs its own (the
    pipeline's fast paths, compiled or not) asks for room with reserve(), writes into `buffer` from the
    position it returns, and hands the new end back with commit(): the builder finishes a datagram when
    the next sample does not fit, as aioquic's QuicPacketBuilder does with start_frame and flush.
    """

    def __init__(
        self,
        agent_address: str,
        sub_agent_id: int = 0,
        max_size: int = 1400,
        expanded: bool = False,
    ) -> None:
        addr = ipaddress.ip_address(agent_address)  # ValueError if invalid
        addr_type = 1 if addr.version == 4 else 2
        prefix = _DGRAM_START.pack(5, addr_type) + addr.packed + _U32.pack(sub_agent_id & _U32_MASK)
        self._tail_at = len(prefix)
        self._header_len = len(prefix) + _DGRAM_TAIL.size
        # Smallest flow sample (no header bytes) must fit, or nothing could.
        if max_size < self._header_len + _FLOW_EXPANDED.size:
            raise ValueError(f"max_size {max_size} too small for one sample")
        self._max = max_size
        self._expanded = expanded
        self._buf = bytearray(max_size)
        self._buf[: len(prefix)] = prefix
        self._view = memoryview(self._buf)  # a finished datagram is one copy out of it (the buffer never resizes)
        self._pos = self._header_len
        self._done: list[bytes] = []
        self._outbox: Outbox | None = None
        self.sequence = 1
        self.pending = 0

    @property
    def buffer(self) -> bytearray:
        """The open datagram: samples go at the position reserve() returns (it never resizes)."""
        return self._buf

    @property
    def position(self) -> int:
        """Where the open datagram's next sample goes."""
        return self._pos

    @property
    def header_length(self) -> int:
        """Where a datagram's first sample goes."""
        return self._header_len

    @property
    def tail_at(self) -> int:
        """Where the datagram header's DATAGRAM_TAIL_FIELDS start (at DATAGRAM_TAIL_AT from here)."""
        return self._tail_at

    @property
    def outbox(self) -> Outbox | None:
        """Where finished datagrams go; None: take()'s list."""
        return self._outbox

    def set_outbox(self, outbox: Outbox) -> None:
        """Finish datagrams into outbox from now on (those finished already go first); take() empties it."""
        for datagram in self._done:
            outbox.append(datagram)
        self._done = []
        self._outbox = outbox

    @property
    def max_size(self) -> int:
        return self._max

    @property
    def expanded(self) -> bool:
        """Every sample in the expanded form, as configured."""
        return self._expanded

    def compact_header_room(self) -> int:
        """The most header bytes (a multiple of 4, at most MAX_PACKED_HEADER) a compact flow sample alone
        in a datagram holds; -1 when samples are always expanded."""
        if self._expanded:
            return -1
        return min(self._max - self._header_len - _FLOW_COMPACT_SIZE, MAX_PACKED_HEADER) & ~3

    def reserve(self, size: int, uptime_ms: int) -> int:
        """Where a sample of `size` bytes goes: the open datagram is finished first if it has no room."""
        if self._pos + size > self._max:
            if self.pending:
                self._finish(uptime_ms)
            if self._header_len + size > self._max:
                raise ValueError(f"a sample of {size} bytes exceeds max_size {self._max}")
        return self._pos

    def commit(self, end: int, samples: int = 1) -> None:
        """`samples` samples were written into buffer, up to end."""
        self._commit(end, samples)

    def finished_elsewhere(self, datagrams: int, end: int, samples: int) -> None:
        """A compiled caller finished `datagrams` datagrams into the outbox itself (DATAGRAM_TAIL_FIELDS written
        at tail_at: sequence numbers from self.sequence on, the count including the `pending` samples), then
        packed `samples` samples up to end into the open datagram.  One call per run, not per datagram."""
        if datagrams:
            self.sequence = (self.sequence + datagrams) & _U32_MASK
            self.pending = 0
        self._commit(end, samples)

    def _commit(self, end: int, samples: int) -> int:
        if not self._header_len <= end <= self._max:
            raise ValueError(f"sample end {end} outside the datagram ({self._header_len}..{self._max})")
        self._pos = end
        self.pending += samples
        return self.pending

    def add_flow_sample(
        self,
        uptime_ms: int,
        seq: int,
        source_type: int,
        source_index: int,
        rate: int,
        pool: int,
        drops: int,
        input_if: int,
        output_if: int,
        frame_length: int,
        stripped: int,
        header: bytes | bytearray | memoryview,
        extra_records: bytes = b"",
        extra_count: int = 0,
    ) -> None:
        expanded = (
            self._expanded
            or source_index > COMPACT_INDEX_MAX
            or source_type > 0xFF
            or input_if > _COMPACT_IF_MAX
            or output_if > _COMPACT_IF_MAX
        )
        fixed = _FLOW_EXPANDED_SIZE if expanded else _FLOW_COMPACT_SIZE
        hlen = len(header)
        padded = (hlen + 3) & ~3
        size = fixed + padded + len(extra_records)
        if self._pos + size > self._max:
            if self.pending:
                self._finish(uptime_ms)
            room = self._max - self._header_len - fixed - len(extra_records)
            if room < 0:
                raise ValueError("extra_records alone exceed max_size")
            if size - fixed - len(extra_records) > room:
                # A lone sample too big for max_size: keep the leading header
                # bytes that fit (a multiple of 4, so no padding is needed).
                hlen = padded = room & ~3
                header = header[:hlen]
                size = fixed + hlen + len(extra_records)
        pos = self.reserve(size, uptime_ms)
        record_len = 16 + padded  # protocol..header_length + bytes
        buf = self._buf
        if expanded:
            _FLOW_EXPANDED_PACK(
                buf, pos,
                FLOW_SAMPLE_EXPANDED, size - 8, seq & _U32_MASK, source_type, source_index,
                rate, pool & _U32_MASK, drops & _U32_MASK,
                0, input_if, 0, output_if, 1 + extra_count,
                SAMPLED_HEADER, record_len, HEADER_PROTOCOL_ETHERNET, frame_length, stripped, hlen,
            )  # fmt: skip
        else:
            _FLOW_COMPACT_PACK(
                buf, pos,
                FLOW_SAMPLE, size - 8, seq & _U32_MASK, (source_type << 24) | source_index,
                rate, pool & _U32_MASK, drops & _U32_MASK,
                input_if, output_if, 1 + extra_count,
                SAMPLED_HEADER, record_len, HEADER_PROTOCOL_ETHERNET, frame_length, stripped, hlen,
            )  # fmt: skip
        pos += fixed
        buf[pos : pos + hlen] = header
        # The buffer is reused: padding must be written, not assumed zero.
        buf[pos + hlen : pos + padded] = _PADS[hlen & 3]
        pos += padded
        buf[pos : pos + len(extra_records)] = extra_records
        self.commit(pos + len(extra_records))

    def add_counter_sample(
        self,
        uptime_ms: int,
        seq: int,
        source_type: int,
        source_index: int,
        records: bytes,
        record_count: int,
    ) -> None:
        expanded = self._expanded or source_index > COMPACT_INDEX_MAX or source_type > 0xFF
        fixed = _COUNTERS_EXPANDED.size if expanded else _COUNTERS_COMPACT.size
        size = fixed + len(records)
        if self._header_len + size > self._max:
            raise ValueError(f"counter sample of {size} bytes exceeds max_size {self._max}")
        pos = self.reserve(size, uptime_ms)
        buf = self._buf
        if expanded:
            _COUNTERS_EXPANDED.pack_into(
                buf, pos, COUNTERS_SAMPLE_EXPANDED, size - 8, seq & _U32_MASK,
                source_type, source_index, record_count,
            )  # fmt: skip
        else:
            _COUNTERS_COMPACT.pack_into(
                buf, pos, COUNTERS_SAMPLE, size - 8, seq & _U32_MASK,
                (source_type << 24) | source_index, record_count,
            )  # fmt: skip
        pos += fixed
        buf[pos : pos + len(records)] = records
        self.commit(pos + len(records))

    def flush(self, uptime_ms: int) -> None:
        """Finish the open datagram if it holds any sample."""
        if self.pending:
            self._finish(uptime_ms)

    def take(self) -> list[bytes]:
        """Finished datagrams since the last take, oldest first."""
        if self._outbox is not None:
            done = self._outbox.datagrams()
            self._outbox.clear()
            return done
        done = self._done
        self._done = []
        return done

    def _finish(self, uptime_ms: int) -> None:
        _DGRAM_TAIL.pack_into(
            self._buf, self._tail_at, self.sequence, uptime_ms & _U32_MASK, self.pending
        )
        if self._outbox is not None:
            self._outbox.append(self._view[: self._pos])
        else:
            self._done.append(self._view[: self._pos].tobytes())
        self.sequence = (self.sequence + 1) & _U32_MASK
        self.pending = 0
        self._pos = self._header_len


def encode_if_counters(
    ifindex: int,
    iftype: int,
    speed: int,
    direction: int,
    status: int,
    in_octets: int,
    in_ucast: int,
    in_mcast: int,
    in_bcast: int,
    in_discards: int,
    in_errors: int,
    in_unknown: int,
    out_octets: int,
    out_ucast: int,
    out_mcast: int,
    out_bcast: int,
    out_discards: int,
    out_errors: int,
    promisc: int,
) -> bytes:
    """Generic interface counters record (0:1), tag and length included.

    Kernel counters are 64-bit; the 32-bit fields wrap like SNMP Counter32.
    """
    m, q = _U32_MASK, _U64_MASK
    return _IF_COUNTERS.pack(
        IF_COUNTERS, _IF_COUNTERS.size - 8,
        ifindex & m, iftype & m, speed & q, direction & m, status & m,
        in_octets & q, in_ucast & m, in_mcast & m, in_bcast & m,
        in_discards & m, in_errors & m, in_unknown & m,
        out_octets & q, out_ucast & m, out_mcast & m, out_bcast & m,
        out_discards & m, out_errors & m, promisc & m,
    )  # fmt: skip


def encode_ethernet_counters(
    dot3StatsAlignmentErrors: int,
    dot3StatsFCSErrors: int,
    dot3StatsSingleCollisionFrames: int,
    dot3StatsMultipleCollisionFrames: int,
    dot3StatsSQETestErrors: int,
    dot3StatsDeferredTransmissions: int,
    dot3StatsLateCollisions: int,
    dot3StatsExcessiveCollisions: int,
    dot3StatsInternalMacTransmitErrors: int,
    dot3StatsCarrierSenseErrors: int,
    dot3StatsFrameTooLongs: int,
    dot3StatsInternalMacReceiveErrors: int,
    dot3StatsSymbolErrors: int,
) -> bytes:
    """Ethernet interface counters record (0:2), tag and length included."""
    values = (
        dot3StatsAlignmentErrors, dot3StatsFCSErrors, dot3StatsSingleCollisionFrames,
        dot3StatsMultipleCollisionFrames, dot3StatsSQETestErrors,
        dot3StatsDeferredTransmissions, dot3StatsLateCollisions,
        dot3StatsExcessiveCollisions, dot3StatsInternalMacTransmitErrors,
        dot3StatsCarrierSenseErrors, dot3StatsFrameTooLongs,
        dot3StatsInternalMacReceiveErrors, dot3StatsSymbolErrors,
    )  # fmt: skip
    return _ETHERNET_COUNTERS.pack(
        ETHERNET_COUNTERS, _ETHERNET_COUNTERS.size - 8, *(v & _U32_MASK for v in values)
    )


def encode_port_name(name: str) -> bytes:
    """Port name record (0:1005): an XDR string of at most 255 bytes."""
    # Cut at 255 bytes without leaving half a UTF-8 character behind.
    raw = name.encode("utf-8")[:_PORT_NAME_MAX].decode("utf-8", "ignore").encode("utf-8")
    pad = _PADS[len(raw) & 3]
    return _U32.pack(PORT_NAME) + _U32.pack(4 + len(raw) + len(pad)) + _U32.pack(len(raw)) + raw + pad


def encode_queue_records(out_tc: int | None, occupancy: int | None, latency_ns: int | None) -> tuple[bytes, int]:
    """Egress queue (0:1036), queue depth (0:1040) and transit delay (0:1039) records, and their count.

    Only what the kernel supplied (not None) is encoded, in psample's attribute order; the 64-bit
    depth and delay saturate at 0xFFFFFFFF, which the extension defines as "this value or more".
    """
    parts = []
    if out_tc is not None:
        parts.append(_U32_RECORD_PACK(EGRESS_QUEUE, 4, out_tc & _U32_MASK))
    if occupancy is not None:
        parts.append(_U32_RECORD_PACK(QUEUE_DEPTH, 4, occupancy if occupancy < _U32_MASK else _U32_MASK))
    if latency_ns is not None:
        parts.append(_U32_RECORD_PACK(TRANSIT_DELAY, 4, latency_ns if latency_ns < _U32_MASK else _U32_MASK))
    return b"".join(parts), len(parts)


# sFlow Tunnel Structures (enterprise 0): the outer header of the tunnel a packet arrived on (ingress) or is
# about to take (egress), each a sampled_ipv4 / sampled_ipv6 body, and the tunnel's VNI
IPV4_TUNNEL_EGRESS = 1023
IPV4_TUNNEL_INGRESS = 1024
IPV6_TUNNEL_EGRESS = 1025
IPV6_TUNNEL_INGRESS = 1026
VNI_EGRESS = 1029
VNI_INGRESS = 1030
_SAMPLED_IPV4 = struct.Struct("!IIII4s4sIIII")  # tag, length; length, protocol, src, dst, ports, tcp_flags, tos
_SAMPLED_IPV6 = struct.Struct("!IIII16s16sIIII")  # the same with 16-byte addresses and priority for tos


def encode_tunnel_ip(ingress: bool, length: int, protocol: int, src: bytes, dst: bytes, src_port: int,
                     dst_port: int, tcp_flags: int, tos: int) -> bytes:
    """extended_ipv4_tunnel_ingress/egress (0:1024/0:1023) for 4-byte addresses, extended_ipv6_tunnel_* (0:1026/
    0:1025) for 16-byte ones (tos goes into sampled_ipv6's priority), tag and length included."""
    if len(src) == len(dst) == 4:
        wire, tag = _SAMPLED_IPV4, IPV4_TUNNEL_INGRESS if ingress else IPV4_TUNNEL_EGRESS
    elif len(src) == len(dst) == 16:
        wire, tag = _SAMPLED_IPV6, IPV6_TUNNEL_INGRESS if ingress else IPV6_TUNNEL_EGRESS
    else:
        raise ValueError(f"tunnel addresses of {len(src)} and {len(dst)} bytes: both must be 4 or 16")
    m = _U32_MASK
    return wire.pack(tag, wire.size - 8, length & m, protocol & m, src, dst, src_port & m, dst_port & m,
                     tcp_flags & m, tos & m)


def encode_vni(ingress: bool, vni: int) -> bytes:
    """extended_vni_ingress (0:1030) or extended_vni_egress (0:1029), tag and length included."""
    return _U32_RECORD_PACK(VNI_INGRESS if ingress else VNI_EGRESS, 4, vni & _U32_MASK)


# The most bytes a datagram holding one flow sample needs beyond the sampled header's (padded) bytes: an IPv6
# agent's datagram header, the expanded flow sample, an IPv6 tunnel record, its VNI and the three queue records.
# A datagram_size below header + this would cut the header of such a sample.
LARGEST_SAMPLE_ROOM = (
    _DGRAM_START.size + 16 + _U32.size + _DGRAM_TAIL.size
    + _FLOW_EXPANDED.size + _SAMPLED_IPV6.size + 4 * _U32_RECORD.size
)
