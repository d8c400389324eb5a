"""Reference sFlow v5 decoder, declared with construct.

Slow on purpose: it states the wire layout once, plainly, so tests and
operators can check the fast encoder against it. Known structures are
parsed strictly (every length must match its content exactly); unknown
samples and records are kept as opaque bytes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    Const,
    ConstructError,
    Error,
    GreedyBytes,
    Int32ub,
    Int64ub,
    Padding,
    Pass,
    Peek,
    Prefixed,
    PrefixedArray,
    Rebuild,
    Struct,
    Switch,
    Terminated,
    len_,
    this,
)

# --- shared pieces -------------------------------------------------------


def _xdr_pad(length_field: str) -> Padding:
    """XDR pads variable-length opaque data to a multiple of 4 bytes."""
    return Padding(lambda ctx: -ctx[length_field] % 4)


def _tagged(bodies: dict[int, Any]) -> Struct:
    """sFlow's {data_format, opaque<>} pair, the body chosen by the format.

    The length is kept as a field (tests compare it with other decoders);
    the body must fill it exactly. Unknown formats stay raw bytes.
    """
    return Struct(
        "format" / Int32ub,
        "length" / Peek(Int32ub),  # parse only: Prefixed below builds it
        "data" / Prefixed(Int32ub, Switch(this.format, bodies, default=GreedyBytes)),
    )


# sflow_data_source: type (8 bits) and index (24 bits)
DataSource = BitStruct("type" / BitsInteger(8), "index" / BitsInteger(24))
DataSourceExpanded = Struct("type" / Int32ub, "index" / Int32ub)

# interface: format (2 bits) and value (30 bits)
Interface = BitStruct("format" / BitsInteger(2), "value" / BitsInteger(30))
InterfaceExpanded = Struct("format" / Int32ub, "value" / Int32ub)

Address = Struct(
    "type" / Int32ub,
    "address"
    / Switch(
        this.type,
        {0: Pass, 1: Bytes(4), 2: Bytes(16)},
        default=Error,
    ),
)

# --- flow records ----------------------------------------------------------

SampledHeader = Struct(
    "header_protocol" / Int32ub,
    "frame_length" / Int32ub,
    "stripped" / Int32ub,
    "header_length" / Rebuild(Int32ub, len_(this.header)),
    "header" / Bytes(this.header_length),
    _xdr_pad("header_length"),
    Terminated,
)

# the transit delay and queue extension: one unsigned int each
EgressQueue = Struct("queue" / Int32ub, Terminated)  # 0:1036, egress queue number
TransitDelay = Struct("delay" / Int32ub, Terminated)  # 0:1039, ns; 0xFFFFFFFF means that much or more
QueueDepth = Struct("depth" / Int32ub, Terminated)  # 0:1040, bytes queued ahead of the packet

# sFlow Tunnel Structures: the outer header of the tunnel the packet arrived on (ingress) or is about to take
# (egress), as sampled_ipv4 (0:3) / sampled_ipv6 (0:4); the inner header's offset; the VNI
# "ip_length" is the spec's `length` (of the IP packet), renamed apart from the record's own length
SampledIPv4 = Struct(
    "ip_length" / Int32ub,
    "protocol" / Int32ub,
    "src_ip" / Bytes(4),
    "dst_ip" / Bytes(4),
    "src_port" / Int32ub,
    "dst_port" / Int32ub,
    "tcp_flags" / Int32ub,
    "tos" / Int32ub,
    Terminated,
)
SampledIPv6 = Struct(
    "ip_length" / Int32ub,
    "protocol" / Int32ub,
    "src_ip" / Bytes(16),
    "dst_ip" / Bytes(16),
    "src_port" / Int32ub,
    "dst_port" / Int32ub,
    "tcp_flags" / Int32ub,
    "priority" / Int32ub,
    Terminated,
)
Decapsulate = Struct("inner_header_offset" / Int32ub, Terminated)
Vni = Struct("vni" / Int32ub, Terminated)
# (enterprise 0) format -> (direction, structure) of the tunnel records
TUNNEL_RECORDS = {
    1023: ("egress", SampledIPv4), 1024: ("ingress", SampledIPv4),
    1025: ("egress", SampledIPv6), 1026: ("ingress", SampledIPv6),
    1027: ("egress", Decapsulate), 1028: ("ingress", Decapsulate),
    1029: ("egress", Vni), 1030: ("ingress", Vni),
}

FlowRecord = _tagged({1: SampledHeader, 1036: EgressQueue, 1039: TransitDelay, 1040: QueueDepth,
                      **{fmt: body for fmt, (_, body) in TUNNEL_RECORDS.items()}})

# --- counter records ------------------------------------------------------

IfCounters = Struct(
    "ifIndex" / Int32ub,
    "ifType" / Int32ub,
    "ifSpeed" / Int64ub,
    "ifDirection" / Int32ub,
    "ifStatus" / Int32ub,
    "ifInOctets" / Int64ub,
    "ifInUcastPkts" / Int32ub,
    "ifInMulticastPkts" / Int32ub,
    "ifInBroadcastPkts" / Int32ub,
    "ifInDiscards" / Int32ub,
    "ifInErrors" / Int32ub,
    "ifInUnknownProtos" / Int32ub,
    "ifOutOctets" / Int64ub,
    "ifOutUcastPkts" / Int32ub,
    "ifOutMulticastPkts" / Int32ub,
    "ifOutBroadcastPkts" / Int32ub,
    "ifOutDiscards" / Int32ub,
    "ifOutErrors" / Int32ub,
    "ifPromiscuousMode" / Int32ub,
    Terminated,
)

ETHERNET_COUNTER_NAMES = (
    "dot3StatsAlignmentErrors",
    "dot3StatsFCSErrors",
    "dot3StatsSingleCollisionFrames",
    "dot3StatsMultipleCollisionFrames",
    "dot3StatsSQETestErrors",
    "dot3StatsDeferredTransmissions",
    "dot3StatsLateCollisions",
    "dot3StatsExcessiveCollisions",
    "dot3StatsInternalMacTransmitErrors",
    "dot3StatsCarrierSenseErrors",
    "dot3StatsFrameTooLongs",
    "dot3StatsInternalMacReceiveErrors",
    "dot3StatsSymbolErrors",
)
EthernetCounters = Struct(*(name / Int32ub for name in ETHERNET_COUNTER_NAMES), Terminated)

PortName = Struct(
    "name_length" / Rebuild(Int32ub, len_(this.name)),
    "name" / Bytes(this.name_length),
    _xdr_pad("name_length"),
    Terminated,
)

CounterRecord = _tagged({1: IfCounters, 2: EthernetCounters, 1005: PortName})

# --- samples ----------------------------------------------------------------

# Compact and expanded samples differ only in how the source id and the
# interfaces are encoded.


def _flow_sample(source: Any, interface: Any) -> Struct:
    return Struct(
        "sequence_number" / Int32ub,
        "source_id" / source,
        "sampling_rate" / Int32ub,
        "sample_pool" / Int32ub,
        "drops" / Int32ub,
        "input" / interface,
        "output" / interface,
        "records" / PrefixedArray(Int32ub, FlowRecord),
        Terminated,
    )


def _counters_sample(source: Any) -> Struct:
    return Struct(
        "sequence_number" / Int32ub,
        "source_id" / source,
        "records" / PrefixedArray(Int32ub, CounterRecord),
        Terminated,
    )


FlowSample = _flow_sample(DataSource, Interface)
FlowSampleExpanded = _flow_sample(DataSourceExpanded, InterfaceExpanded)
CountersSample = _counters_sample(DataSource)
CountersSampleExpanded = _counters_sample(DataSourceExpanded)

SAMPLE_KINDS = {1: "flow", 2: "counters", 3: "flow", 4: "counters"}

Sample = _tagged(
    {1: FlowSample, 2: CountersSample, 3: FlowSampleExpanded, 4: CountersSampleExpanded}
)

Datagram = Struct(
    "version" / Const(5, Int32ub),
    "agent_address" / Address,
    "sub_agent_id" / Int32ub,
    "sequence_number" / Int32ub,
    "uptime" / Int32ub,
    "samples" / PrefixedArray(Int32ub, Sample),
    Terminated,
)

# --- construct containers -> plain dicts -------------------------------------


def _head(tagged: Any) -> dict[str, Any]:
    # data_format: enterprise in the upper 20 bits, format number in the lower 12
    return {"enterprise": tagged.format >> 12, "format": tagged.format & 0xFFF, "length": tagged.length}


def _fields(container: Any) -> dict[str, Any]:
    return {k: v for k, v in container.items() if not k.startswith("_")}


def _record_dict(rec: Any) -> dict[str, Any]:
    out = _head(rec)
    if isinstance(rec.data, bytes):  # a format this decoder does not know
        out["data"] = rec.data
        return out
    out.update(_fields(rec.data))
    if "name" in out:  # port name: XDR strings carry UTF-8
        out["name"] = out["name"].decode("utf-8", "replace")
    for side in ("src_ip", "dst_ip"):  # tunnel addresses as text
        if side in out:
            out[side] = str(ipaddress.ip_address(bytes(out[side])))
    return out


def _source_and_interfaces(body: Any, out: dict[str, Any]) -> None:
    out["source_id_type"] = body.source_id.type
    out["source_id_index"] = body.source_id.index
    for side in ("input", "output"):
        if side in body:
            out[f"{side}_format"] = body[side].format
            out[side] = body[side].value


def _sample_dict(sample: Any) -> dict[str, Any]:
    out = _head(sample)
    body = sample.data
    if isinstance(body, bytes):  # a sample type this decoder does not know
        out["kind"] = "unknown"
        out["data"] = body
        return out
    out["kind"] = SAMPLE_KINDS[sample.format]
    out["expanded"] = sample.format in (3, 4)
    out["sequence_number"] = body.sequence_number
    _source_and_interfaces(body, out)
    if out["kind"] == "flow":
        out["sampling_rate"] = body.sampling_rate
        out["sample_pool"] = body.sample_pool
        out["drops"] = body.drops
    out["records"] = [_record_dict(rec) for rec in body.records]
    return out


def _agent_text(addr: Any) -> str | None:
    if addr.type == 0:
        return None
    return str(ipaddress.ip_address(bytes(addr.address)))


_PLAIN_WORDS = {
    "Error field was activated during parsing": "unknown value",
    "expected end of stream": "bytes left over after the content its length declares",
}


def _explain(exc: ConstructError) -> str:
    """One line: where in the datagram (construct's path) and what went wrong."""
    detail = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
    where = (exc.path or "").replace("(parsing)", "").strip(" ->")
    detail = _PLAIN_WORDS.get(detail, detail)
    return f"malformed sFlow datagram at {where or 'top level'}: {detail}"


def parse_datagram(data: bytes) -> dict[str, Any]:
    """Decode one sFlow v5 datagram into plain dicts and lists.

    Raises ValueError, naming the failing field, on malformed input.
    """
    if len(data) >= 4 and int.from_bytes(data[:4], "big") != 5:
        raise ValueError(f"not an sFlow v5 datagram (version {int.from_bytes(data[:4], 'big')})")
    try:
        dgram = Datagram.parse(bytes(data))
    except ConstructError as exc:
        raise ValueError(_explain(exc)) from None
    return {
        "version": 5,
        "agent_address_type": dgram.agent_address.type,
        "agent_address": _agent_text(dgram.agent_address),
        "sub_agent_id": dgram.sub_agent_id,
        "sequence_number": dgram.sequence_number,
        "uptime": dgram.uptime,
        "samples": [_sample_dict(s) for s in dgram.samples],
    }


# --- operator text --------------------------------------------------------

_HEX_PREVIEW = 32  # header bytes shown per sample


def _iface(sample: dict[str, Any], side: str) -> str:
    fmt = sample[f"{side}_format"]
    value = sample[side]
    return str(value) if fmt == 0 else f"{fmt}:{value}"


# (enterprise, format) -> (label, field, unit) of the one-number queue records
_QUEUE_RECORDS = {(0, 1036): ("queue", "queue", ""), (0, 1039): ("delay", "delay", "ns"),
                  (0, 1040): ("depth", "depth", "B")}


def _format_flow(s: dict[str, Any]) -> str:
    parts = [
        f"flow{' (expanded)' if s['expanded'] else ''} seq={s['sequence_number']}",
        f"src={s['source_id_type']}:{s['source_id_index']}",
        f"rate={s['sampling_rate']} pool={s['sample_pool']} drops={s['drops']}",
        f"in={_iface(s, 'input')} out={_iface(s, 'output')}",
    ]
    for rec in s["records"]:
        if (rec["enterprise"], rec["format"]) == (0, 1):
            preview = rec["header"][:_HEX_PREVIEW].hex()
            more = "..." if rec["header_length"] > _HEX_PREVIEW else ""
            parts.append(
                f"frame={rec['frame_length']} stripped={rec['stripped']} "
                f"hdr={rec['header_length']} {preview}{more}"
            )
        elif (rec["enterprise"], rec["format"]) in _QUEUE_RECORDS:
            name, key, unit = _QUEUE_RECORDS[(rec["enterprise"], rec["format"])]
            parts.append(f"{name}={rec[key]}{unit}")
        elif rec["enterprise"] == 0 and rec["format"] in TUNNEL_RECORDS:
            parts.append(_format_tunnel(rec))
        else:
            parts.append(f"record {rec['enterprise']}:{rec['format']} len={rec['length']}")
    return " ".join(parts)


def _format_tunnel(rec: dict[str, Any]) -> str:
    direction = TUNNEL_RECORDS[rec["format"]][0]
    if "vni" in rec:
        return f"vni-{direction}={rec['vni']}"
    if "inner_header_offset" in rec:
        return f"decap-{direction} inner_offset={rec['inner_header_offset']}"
    src, dst = rec["src_ip"], rec["dst_ip"]
    if ":" in src:
        src, dst = f"[{src}]", f"[{dst}]"
    tos = rec["tos"] if "tos" in rec else rec["priority"]
    return (f"tunnel-{direction} proto={rec['protocol']} {src}:{rec['src_port']}>{dst}:{rec['dst_port']} "
            f"tos={tos} len={rec['ip_length']} flags={rec['tcp_flags']}")


def _format_counter_record(rec: dict[str, Any]) -> str:
    key = (rec["enterprise"], rec["format"])
    if key == (0, 1):
        status = rec["ifStatus"]
        return (
            f"if={rec['ifIndex']} type={rec['ifType']} speed={rec['ifSpeed']} "
            f"admin={'up' if status & 1 else 'down'} oper={'up' if status & 2 else 'down'} "
            f"in_octets={rec['ifInOctets']} in_ucast={rec['ifInUcastPkts']} "
            f"in_discards={rec['ifInDiscards']} in_errors={rec['ifInErrors']} "
            f"out_octets={rec['ifOutOctets']} out_ucast={rec['ifOutUcastPkts']} "
            f"out_discards={rec['ifOutDiscards']} out_errors={rec['ifOutErrors']}"
        )
    if key == (0, 2):
        return f"ethernet fcs_errors={rec['dot3StatsFCSErrors']} align_errors={rec['dot3StatsAlignmentErrors']}"
    if key == (0, 1005):
        return f"name={rec['name']!r}"
    return f"record {rec['enterprise']}:{rec['format']} len={rec['length']}"


def _format_counters(s: dict[str, Any]) -> str:
    head = (
        f"counters{' (expanded)' if s['expanded'] else ''} seq={s['sequence_number']} "
        f"src={s['source_id_type']}:{s['source_id_index']}"
    )
    return "; ".join([head, *(_format_counter_record(r) for r in s["records"])])


def format_datagram(d: dict[str, Any]) -> str:
    """Readable text: one line for the datagram, then one line per sample."""
    lines = [
        f"sFlow v5 agent={d['agent_address']} sub_agent={d['sub_agent_id']} "
        f"seq={d['sequence_number']} uptime={d['uptime']}ms samples={len(d['samples'])}"
    ]
    for s in d["samples"]:
        if s["kind"] == "flow":
            lines.append("  " + _format_flow(s))
        elif s["kind"] == "counters":
            lines.append("  " + _format_counters(s))
        else:
            lines.append(f"  sample {s['enterprise']}:{s['format']} len={s['length']} (not decoded)")
    return "\n".join(lines)
