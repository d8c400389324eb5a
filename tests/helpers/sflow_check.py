"""Check sFlow datagrams with tshark, an independent decoder.

tshark_decode() returns tshark's view of each datagram; cross_check()
asserts that view agrees with hwsflow.wire.sflow_ref. tshark does not complain
about wrong length fields by itself, so the length fields are compared too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hwsflow.wire.pcap import write_udp_pcap
from hwsflow.wire.sflow_ref import parse_datagram

PORT = 6343
SETUP_HINT = "tshark is not installed: run tools/setup-test-env"
_EXPERT_ERROR = 0x00800000  # PI_ERROR; tshark's JSON gives severities in decimal

# tshark field -> our name. Compact and expanded samples (and tshark 4.0's
# spellings, e.g. "output_interface.format") land on the same names.
_DATAGRAM_FIELDS = {
    "sflow_245.version": "version",
    "sflow_245.agent": "agent_address",
    "sflow_245.agent.v6": "agent_address",
    "sflow_245.sub_agent_id": "sub_agent_id",
    "sflow_245.sequence_number": "sequence_number",
    "sflow_245.sysuptime": "uptime",
    "sflow_245.numsamples": "numsamples",
}
_SAMPLE_FIELDS = {
    "sflow_245.sampletype": "format",
    "sflow_5.sample_length": "length",
    "sflow.flow_sample.sequence_number": "sequence_number",
    "sflow.counters_sample.sequence_number": "sequence_number",
    "sflow.flow_sample.source_id_class": "source_id_type",
    "sflow.flow_sample.index": "source_id_index",
    "sflow.flow_sample.source_id_type": "source_id_type",
    "sflow.flow_sample.source_id_index": "source_id_index",
    "sflow.counters_sample.source_id_class": "source_id_type",
    "sflow.counters_sample.index": "source_id_index",
    "sflow.counters_sample.source_id_type": "source_id_type",
    "sflow.counters_sample.source_id_index": "source_id_index",
    "sflow.flow_sample.sampling_rate": "sampling_rate",
    "sflow.flow_sample.sample_pool": "sample_pool",
    "sflow.flow_sample.dropped_packets": "drops",
    "sflow.flow_sample.input_interface": "input",
    "sflow.flow_sample.input_interface_value": "input",
    "sflow.flow_sample.output_interface_value": "output",
    "sflow.flow_sample.flow_record": "record_count",
    "sflow.counters_sample.counters_records": "record_count",
}
_RECORD_FIELDS = {
    "sflow_245.flow_record_format": "format",
    "sflow_245.counters_record_format": "format",
    "sflow_5.flow_data_length": "length",
    "sflow_245.header.frame_length": "frame_length",
    "sflow_245.header.payload_stripped": "stripped",
    "sflow_245.header.sampled_header_length": "header_length",
    "sflow_245.header": "header",
}
_SAMPLE_MARK = "sflow_245.sampletype"
_RECORD_MARKS = ("sflow_245.flow_record_format", "sflow_245.counters_record_format")
_SKIP = ("sflow_245.header_tree",)  # tshark's decode of the sampled packet itself
# Flow records tshark 4.0 does not decode (the tunnel structures, the queue extension): it reads their format and
# length but does not step over their bodies, so it reads the next record from inside the body.  The first
# such record of a sample is compared; the records after it are not (their count still is).
TSHARK_UNDECODED = frozenset({1023, 1024, 1025, 1026, 1027, 1028, 1029, 1030, 1036, 1039, 1040})

Pairs = list[tuple[str, Any]]


def _value(key: str, raw: str) -> Any:
    if key == "sflow_245.header":
        return bytes.fromhex(raw.replace(":", ""))
    if key in ("sflow_245.agent", "sflow_245.agent.v6"):
        return raw
    return int(raw, 16) if raw.startswith("0x") else int(raw)


def _has(pairs: Pairs, marks: tuple[str, ...]) -> bool:
    return any(key in marks for key, _ in pairs)


def _collect(pairs: Pairs, table: dict[str, str], out: dict[str, Any], stop: tuple[str, ...]) -> list[Pairs]:
    """Fill out from pairs and their plain subtrees; return subtrees marked by stop."""
    found = []
    for key, value in pairs:
        if key in _SKIP:
            continue
        if isinstance(value, list):
            if _has(value, stop):
                found.append(value)
            else:
                found += _collect(value, table, out, stop)
        elif key in table:
            out[table[key]] = _value(key, value)
    return found


def _problems(node: Any) -> list[str]:
    """Malformed-packet marks and error-level expert items anywhere in a packet."""
    found: list[str] = []
    if not isinstance(node, list):
        return found
    for key, value in node:
        if key == "_ws.malformed" and not isinstance(value, list):
            found.append(value)
        if key == "_ws.expert" and isinstance(value, list):
            fields = dict(pair for pair in value if not isinstance(pair[1], list))
            if int(fields.get("_ws.expert.severity", "0")) >= _EXPERT_ERROR:
                found.append(fields.get("_ws.expert.message", "expert error"))
        found += _problems(value)
    return found


def _datagram(layers: Pairs) -> dict[str, Any]:
    sflow = next((value for key, value in layers if key == "sflow"), None)
    out: dict[str, Any] = {"problems": _problems(layers), "samples": []}
    if sflow is None:
        out["problems"].append("tshark did not decode the payload as sFlow")
        return out
    for sample_pairs in _collect(sflow, _DATAGRAM_FIELDS, out, (_SAMPLE_MARK,)):
        sample: dict[str, Any] = {}
        records = _collect(sample_pairs, _SAMPLE_FIELDS, sample, _RECORD_MARKS)
        sample["records"] = []
        for record_pairs in records:
            record: dict[str, Any] = {}
            _collect(record_pairs, _RECORD_FIELDS, record, ())
            sample["records"].append(record)
        out["samples"].append(sample)
    return out


def tshark_decode(payloads: list[bytes]) -> list[dict[str, Any]]:
    """tshark's view of each payload, sent to UDP 6343 in a synthetic pcap.

    Each dict has the datagram fields, "samples" (each with "records") and
    "problems": tshark's malformed / error-level expert messages.
    """
    tshark = shutil.which("tshark")
    if tshark is None:
        raise RuntimeError(SETUP_HINT)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sflow.pcap"
        path.write_bytes(write_udp_pcap(payloads, dst_port=PORT))
        result = subprocess.run(
            [tshark, "-n", "-r", str(path), "-d", f"udp.port=={PORT},sflow", "-T", "json"],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"tshark failed ({result.returncode}): {result.stderr.strip()}")
    # Keep key order and duplicate keys: tshark repeats keys (and sample
    # labels such as "Flow sample, seq 1") within one object.
    packets = json.loads(result.stdout, object_pairs_hook=list)
    return [_datagram(_layers(packet)) for packet in packets]


def _layers(packet: Pairs) -> Pairs:
    source = dict(packet)["_source"]
    layers: Pairs = dict(source)["layers"]
    return layers


def _expected(ref: dict[str, Any]) -> dict[str, Any]:
    """sflow_ref's decode, shaped like _datagram's output."""
    samples = []
    for s in ref["samples"]:
        sample = {k: s[k] for k in ("format", "length")}
        if s["kind"] != "unknown":
            for key in ("sequence_number", "source_id_type", "source_id_index",
                        "sampling_rate", "sample_pool", "drops", "input", "output"):  # fmt: skip
                if key in s:
                    sample[key] = s[key]
            sample["record_count"] = len(s["records"])
            sample["records"] = []
            for r in s["records"]:
                sample["records"].append(_expected_record(r))
                if s["kind"] == "flow" and r["enterprise"] == 0 and r["format"] in TSHARK_UNDECODED:
                    break
        samples.append(sample)
    return {
        "sequence_number": ref["sequence_number"],
        "numsamples": len(ref["samples"]),
        "uptime": ref["uptime"],
        "sub_agent_id": ref["sub_agent_id"],
        "agent_address": ref["agent_address"],
        "samples": samples,
    }


def _expected_record(r: dict[str, Any]) -> dict[str, Any]:
    record = {"format": r["format"], "length": r["length"]}
    if "header" in r:
        for key in ("frame_length", "stripped", "header_length", "header"):
            record[key] = r[key]
    return record


def _diff(path: str, want: Any, got: Any, out: list[str]) -> None:
    if isinstance(want, dict):
        for key, value in want.items():
            if key == "header" and isinstance(got, dict) and isinstance(got.get(key), bytes):
                # tshark shows the header with its XDR padding
                got = {**got, key: got[key][: len(value)]}
            _diff(f"{path}.{key}", value, got.get(key) if isinstance(got, dict) else None, out)
    elif isinstance(want, list):
        got = got if isinstance(got, list) else []
        if len(want) != len(got):
            out.append(f"{path}: {len(want)} items in sflow_ref, {len(got)} in tshark")
        for i, (w, g) in enumerate(zip(want, got)):
            _diff(f"{path}[{i}]", w, g, out)
    elif want != got:
        out.append(f"{path}: sflow_ref {want!r}, tshark {got!r}")


def cross_check(payloads: list[bytes]) -> list[dict[str, Any]]:
    """Assert tshark and sflow_ref agree on every datagram; return tshark's view.

    Compared: datagram sequence, uptime, agent, sample count; per sample its
    format, length, sequence, source id, rate, pool, drops, input, output and
    record count; per record its format and length, and for raw packet
    headers frame_length, stripped, header length and bytes, up to the first
    record tshark does not decode (TSHARK_UNDECODED).
    """
    seen = tshark_decode(payloads)
    if len(seen) != len(payloads):
        raise AssertionError(f"tshark saw {len(seen)} packets, {len(payloads)} were written")
    problems: list[str] = []
    for i, (raw, view) in enumerate(zip(payloads, seen)):
        problems += [f"datagram {i}: tshark: {p}" for p in view["problems"]]
        try:
            ref = parse_datagram(raw)
        except ValueError as exc:
            problems.append(f"datagram {i}: sflow_ref: {exc}")
            continue
        want = _expected(ref)
        got = {**view, "samples": [
            {**g, "records": g["records"][:len(w["records"])]} if "records" in w and "records" in g else g
            for w, g in zip(want["samples"], view["samples"])] + view["samples"][len(want["samples"]):]}
        _diff(f"datagram {i}", want, got, problems)
    if problems:
        raise AssertionError("tshark disagrees:\n" + "\n".join(problems))
    return seen
