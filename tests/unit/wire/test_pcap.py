"""hwsflow.wire.pcap round trips and link types, and `hwsflow decode` over them."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsflow.wire import pcap
from hwsflow.tools.decode import run_decode
from hwsflow.wire.sflow import DatagramBuilder, encode_port_name

PAYLOADS = [b"", b"x", b"sflow" * 50, bytes(range(256)) * 5]


def test_round_trip_ipv4() -> None:
    data = pcap.write_udp_pcap(PAYLOADS, dst_port=6343)
    assert pcap.read_udp_payloads(data, 6343) == PAYLOADS
    assert pcap.read_udp_payloads(data, None) == PAYLOADS
    assert pcap.read_udp_payloads(data, 9999) == []


def test_round_trip_ipv6() -> None:
    data = pcap.write_udp_pcap(PAYLOADS, dst_port=7000, src="2001:db8::1", dst="2001:db8::2")
    assert pcap.read_udp_payloads(data, 7000) == PAYLOADS


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=2000), max_size=10), st.integers(1, 65535))
def test_round_trip_random(payloads: list[bytes], port: int) -> None:
    assert pcap.read_udp_payloads(pcap.write_udp_pcap(payloads, dst_port=port), port) == payloads


def test_port_matches_source_or_destination() -> None:
    data = pcap.write_udp_pcap([b"a"], dst_port=6343, src_port=4000)
    assert pcap.read_udp_payloads(data, 4000) == [b"a"]


def test_ipv4_header_is_well_formed() -> None:
    packet = pcap.udp_packet(b"hello", "192.0.2.1", "192.0.2.2", 1234, 6343)
    assert len(packet) == 20 + 8 + 5
    assert struct.unpack_from("!H", packet, 2)[0] == len(packet)  # total length
    assert pcap._checksum(packet[:20]) == 0  # a correct header sums to zero
    assert struct.unpack_from("!HHH", packet, 20) == (1234, 6343, 13)


def test_ipv6_udp_checksum_is_valid() -> None:
    packet = pcap.udp_packet(b"hello", "2001:db8::1", "2001:db8::2", 1234, 6343)
    udp = packet[40:]
    pseudo = packet[8:40] + struct.pack("!I3xB", len(udp), 17)
    assert pcap._checksum(pseudo + udp) == 0


def test_mixed_address_families_rejected() -> None:
    with pytest.raises(ValueError):
        pcap.udp_packet(b"", "192.0.2.1", "2001:db8::2", 1, 2)


def sll_frame(packet: bytes) -> bytes:
    ethertype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    # packet type 0 (to us), ARPHRD_ETHER, address length 6, padded address
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01", ethertype) + packet


def sll2_frame(packet: bytes) -> bytes:
    ethertype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    return struct.pack("!HHIHBB8s", ethertype, 0, 3, 1, 0, 6, b"\x02\0\0\0\0\x01") + packet


def vlan_frame(packet: bytes) -> bytes:
    frame = pcap.ethernet_frame(packet)
    return frame[:12] + struct.pack("!HH", 0x8100, 100) + frame[12:]


@pytest.mark.parametrize(
    "linktype, wrap",
    [
        (pcap.LINKTYPE_ETHERNET, pcap.ethernet_frame),
        (pcap.LINKTYPE_ETHERNET, vlan_frame),
        (pcap.LINKTYPE_RAW, lambda p: p),
        (pcap.LINKTYPE_IPV4, lambda p: p),
        (pcap.LINKTYPE_LINUX_SLL, sll_frame),
        (pcap.LINKTYPE_LINUX_SLL2, sll2_frame),
    ],
)
@pytest.mark.parametrize("src, dst", [("192.0.2.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2")])
def test_linktypes(linktype: int, wrap: Callable[[bytes], bytes], src: str, dst: str) -> None:
    if linktype == pcap.LINKTYPE_IPV4 and ":" in src:
        linktype = pcap.LINKTYPE_IPV6
    frames = [wrap(pcap.udp_packet(p, src, dst, 5000, 6343)) for p in PAYLOADS]
    assert pcap.read_udp_payloads(pcap.write_pcap(frames, linktype), 6343) == PAYLOADS


def test_skips_what_is_not_wanted_udp() -> None:
    udp = pcap.udp_packet(b"keep", "192.0.2.1", "192.0.2.2", 5000, 6343)
    tcp = bytearray(pcap.udp_packet(b"tcp!", "192.0.2.1", "192.0.2.2", 5000, 6343))
    tcp[9] = 6  # protocol TCP
    fragment = bytearray(udp)
    fragment[6:8] = struct.pack("!H", 0x2000)  # more fragments
    arp = pcap.ethernet_frame(udp)[:12] + b"\x08\x06" + bytes(28)
    cut = pcap.ethernet_frame(udp)[:30]  # snaplen cut the UDP header
    frames = [arp, pcap.ethernet_frame(bytes(tcp)), pcap.ethernet_frame(bytes(fragment)), cut]
    frames.append(pcap.ethernet_frame(udp) + b"\0" * 20)  # Ethernet trailer padding
    assert pcap.read_udp_payloads(pcap.write_pcap(frames), None) == [b"keep"]


def test_ipv6_extension_header_is_walked() -> None:
    packet = pcap.udp_packet(b"v6", "2001:db8::1", "2001:db8::2", 5000, 6343)
    hop_by_hop = bytes([17, 0]) + bytes(6)  # next header UDP, 8 bytes long
    payload_len = struct.unpack_from("!H", packet, 4)[0] + 8
    packet = packet[:4] + struct.pack("!HB", payload_len, 0) + packet[7:40] + hop_by_hop + packet[40:]
    assert pcap.read_udp_payloads(pcap.write_pcap([packet], pcap.LINKTYPE_RAW), None) == [b"v6"]


def test_big_endian_and_nanosecond_files() -> None:
    frame = pcap.ethernet_frame(pcap.udp_packet(b"be", "192.0.2.1", "192.0.2.2", 1, 6343))
    header = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    record = struct.pack(">IIII", 1, 999_999_999, len(frame), len(frame))
    assert pcap.read_udp_payloads(header + record + frame, 6343) == [b"be"]


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "shorter"),
        (b"\x0a\x0d\x0d\x0a" + bytes(40), "pcapng"),
        (bytes(24), "not a pcap"),
    ],
)
def test_not_a_pcap(data: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        pcap.read_udp_payloads(data, None)


def test_unsupported_linktype() -> None:
    with pytest.raises(ValueError, match="linktype 147"):
        pcap.read_udp_payloads(pcap.write_pcap([b"abc"], 147), None)


def test_truncated_last_record_is_skipped() -> None:
    data = pcap.write_udp_pcap([b"one", b"two"])
    assert pcap.read_udp_payloads(data[:-2], None) == [b"one"]


# --- hwsflow decode ---------------------------------------------------------------


def two_datagrams() -> list[bytes]:
    builder = DatagramBuilder("192.0.2.9")
    builder.add_flow_sample(1, 1, 0, 3, 100, 100, 0, 3, 0, 60, 4, bytes(range(60)))
    builder.flush(10)
    builder.add_counter_sample(20, 1, 0, 3, encode_port_name("eth0"), 1)
    builder.flush(20)
    return builder.take()


def test_decode_pcap_text(tmp_path: Path) -> None:
    path = tmp_path / "cap.pcap"
    path.write_bytes(pcap.write_udp_pcap([*two_datagrams(), b"\0\0\0\5junk"], dst_port=6343))
    out = io.StringIO()
    assert run_decode(port=None, pcap=str(path), count=None, json_out=False, out=out) == 0
    text = out.getvalue()
    assert text.count("sFlow v5 agent=192.0.2.9") == 2
    assert "flow seq=1" in text and "name='eth0'" in text
    (bad,) = [line for line in text.splitlines() if line.startswith("malformed")]
    assert "8 bytes" in bad


def test_decode_pcap_json_count_and_port(tmp_path: Path) -> None:
    path = tmp_path / "cap.pcap"
    path.write_bytes(pcap.write_udp_pcap(two_datagrams(), dst_port=7777))
    out = io.StringIO()
    assert run_decode(port=7777, pcap=str(path), count=1, json_out=True, out=out) == 0
    (line,) = out.getvalue().splitlines()
    d = json.loads(line)
    assert d["sequence_number"] == 1
    assert d["samples"][0]["records"][0]["header"] == bytes(range(60)).hex()
    out = io.StringIO()
    assert run_decode(port=6343, pcap=str(path), count=None, json_out=True, out=out) == 0
    assert out.getvalue() == ""


def test_decode_missing_file(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_decode(port=None, pcap=str(tmp_path / "none"), count=None, json_out=False, out=out) == 1


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::", 0))
        return int(s.getsockname()[1])


def test_decode_listens_on_ipv4_and_ipv6() -> None:
    port = free_udp_port()
    out = io.StringIO()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(run_decode(port=port, pcap=None, count=3, json_out=True, out=out)),
        daemon=True,  # a listener that never got its datagrams must not hang pytest
    )
    thread.start()
    datagrams = two_datagrams()
    # Resend until the listener has bound its socket and counted 3.
    for _ in range(200):
        for family, host, data in (
            (socket.AF_INET, "127.0.0.1", datagrams[0]),
            (socket.AF_INET6, "::1", datagrams[1]),
        ):
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.sendto(data, (host, port))
        thread.join(0.05)
        if not thread.is_alive():
            break
    assert result == [0]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    peers = {line["peer"].rsplit(":", 1)[0] for line in lines}
    assert peers <= {"127.0.0.1", "[::1]"}
