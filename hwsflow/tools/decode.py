"""`hwsflow decode`: show sFlow datagrams from a UDP port or a pcap file.

An operator's tool for checking what an agent (this one or any other)
really sends, decoded by the strict reference decoder in sflow_ref.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any, TextIO

from hwsflow.wire.pcap import read_udp_payloads
from hwsflow.wire.sflow_ref import format_datagram, parse_datagram

DEFAULT_PORT = 6343
_MAX_UDP = 65535


def _json_default(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _show(data: bytes, peer: str | None, json_out: bool, out: TextIO) -> None:
    """Print one datagram; a malformed one becomes a single line."""
    try:
        dgram = parse_datagram(data)
    except ValueError as exc:
        if json_out:
            line = json.dumps({"peer": peer, "length": len(data), "error": str(exc)})
        else:
            where = f" from {peer}" if peer else ""
            line = f"malformed datagram{where} ({len(data)} bytes): {exc}"
        print(line.replace("\n", " "), file=out, flush=True)
        return
    if json_out:
        if peer:
            dgram["peer"] = peer
        print(json.dumps(dgram, default=_json_default), file=out, flush=True)
    else:
        head = f"# from {peer}, {len(data)} bytes\n" if peer else ""
        print(head + format_datagram(dgram), file=out, flush=True)


def _open_socket(port: int) -> socket.socket:
    """One UDP socket for IPv4 and IPv6 (dual stack), IPv4 only as fallback."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:  # kernel without IPv6
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", port))
        return sock
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    return sock


def _peer_text(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    if host.startswith("::ffff:"):  # IPv4 seen through the dual-stack socket
        host = host[len("::ffff:") :]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(port: int, count: int | None, json_out: bool, out: TextIO) -> int:
    with _open_socket(port) as sock:
        seen = 0
        while count is None or seen < count:
            data, address = sock.recvfrom(_MAX_UDP)
            _show(data, _peer_text(address), json_out, out)
            seen += 1
    return 0


def _read_pcap(path: str, port: int | None, count: int | None, json_out: bool, out: TextIO) -> int:
    try:
        with open(path, "rb") as f:
            payloads = read_udp_payloads(f.read(), port)
    except (OSError, ValueError) as exc:
        print(f"hwsflow decode: {path}: {exc}", file=sys.stderr)
        return 1
    for data in payloads[:count]:
        _show(data, None, json_out, out)
    return 0


def run_decode(
    *, port: int | None, pcap: str | None, count: int | None, json_out: bool, out: TextIO
) -> int:
    """Decode from pcap (port filters, None = every UDP datagram), else listen
    on port (6343 when None). Returns the process exit code."""
    try:
        if pcap is not None:
            return _read_pcap(pcap, port, count, json_out, out)
        return _listen(DEFAULT_PORT if port is None else port, count, json_out, out)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # e.g. port already in use
        print(f"hwsflow decode: {exc}", file=sys.stderr)
        return 1
