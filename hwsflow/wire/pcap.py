"""Classic libpcap files: pull UDP payloads out, or wrap payloads in one.

Pure functions over bytes (stdlib struct only), so `hwsflow decode --pcap`
and the tests can read captures, and tshark can read what the encoder makes.
"""

from __future__ import annotations

import ipaddress
import struct

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
_IPPROTO_UDP = 17
# IPv6 extension headers that may sit between the fixed header and UDP
_IPV6_EXT_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44

_MAGIC_USEC = 0xA1B2C3D4
_MAGIC_NSEC = 0xA1B23C4D
_MAGIC_PCAPNG = 0x0A0D0D0A

_GLOBAL = struct.Struct("IHHiIII")  # magic, major, minor, zone, sigfigs, snaplen, linktype
_RECORD = struct.Struct("IIII")  # ts_sec, ts_frac, incl_len, orig_len
_UDP = struct.Struct("!HHHH")


# --- reading -----------------------------------------------------------------


def _records(data: bytes) -> tuple[int, list[bytes]]:
    """(linktype, captured frames) of a classic pcap file, either byte order."""
    if len(data) < _GLOBAL.size:
        raise ValueError("not a pcap file: shorter than the 24-byte header")
    magic_le = struct.unpack_from("<I", data)[0]
    if magic_le in (_MAGIC_USEC, _MAGIC_NSEC):
        order = "<"
    elif struct.unpack_from(">I", data)[0] in (_MAGIC_USEC, _MAGIC_NSEC):
        order = ">"
    elif magic_le == _MAGIC_PCAPNG:
        raise ValueError("pcapng is not supported: convert with `editcap -F pcap IN OUT`")
    else:
        raise ValueError(f"not a pcap file (magic {magic_le:#010x})")
    glob = struct.Struct(order + _GLOBAL.format)
    rec = struct.Struct(order + _RECORD.format)
    linktype = glob.unpack_from(data)[6] & 0x0FFFFFFF  # upper bits: FCS info
    frames = []
    pos = glob.size
    while pos + rec.size <= len(data):
        incl_len = rec.unpack_from(data, pos)[2]
        pos += rec.size
        frames.append(data[pos : pos + incl_len])  # a cut-off last record stays short
        pos += incl_len
    return linktype, frames


def _ethertype_payload(frame: bytes, linktype: int) -> tuple[int, bytes] | None:
    """(ethertype, network-layer bytes) of one captured frame."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        ethertype, pos = struct.unpack_from("!H", frame, 12)[0], 14
        while ethertype in _ETH_VLAN_TAGS and len(frame) >= pos + 4:
            ethertype, pos = struct.unpack_from("!H", frame, pos + 2)[0], pos + 4
        return ethertype, frame[pos:]
    if linktype == LINKTYPE_LINUX_SLL:
        return (struct.unpack_from("!H", frame, 14)[0], frame[16:]) if len(frame) >= 16 else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return (struct.unpack_from("!H", frame, 0)[0], frame[20:]) if len(frame) >= 20 else None
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not frame:
            return None
        return (_ETH_IPV4 if frame[0] >> 4 == 4 else _ETH_IPV6), frame
    raise ValueError(f"unsupported pcap linktype {linktype}")


def _ipv4_udp(packet: bytes) -> bytes | None:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    frag = struct.unpack_from("!H", packet, 6)[0]
    if packet[9] != _IPPROTO_UDP or frag & 0x3FFF:  # not UDP, or a fragment
        return None
    return packet[ihl:total]  # total length drops Ethernet trailer padding


def _ipv6_udp(packet: bytes) -> bytes | None:
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    payload_len = struct.unpack_from("!H", packet, 4)[0]
    next_header, pos = packet[6], 40
    end = 40 + payload_len
    while next_header in _IPV6_EXT_HEADERS and pos + 8 <= len(packet):
        next_header, pos = packet[pos], pos + (packet[pos + 1] + 1) * 8
    if next_header != _IPPROTO_UDP:  # fragments (44) included: no reassembly
        return None
    return packet[pos:end]


def _udp_payload(segment: bytes | None, port: int | None) -> bytes | None:
    if segment is None or len(segment) < _UDP.size:
        return None
    sport, dport, length, _ = _UDP.unpack_from(segment)
    if port is not None and port not in (sport, dport):
        return None
    if length < _UDP.size or length > len(segment):  # cut off by the snaplen
        return None
    return bytes(segment[_UDP.size : length])


def read_udp_payloads(data: bytes, port: int | None) -> list[bytes]:
    """UDP payloads in a classic pcap file, in capture order.

    port (source or destination, like tshark's udp.port) filters; None keeps
    every UDP datagram. Non-UDP, fragmented and cut-off packets are skipped.
    """
    linktype, frames = _records(data)
    out = []
    for frame in frames:
        found = _ethertype_payload(frame, linktype)
        if found is None:
            continue
        ethertype, packet = found
        if ethertype == _ETH_IPV4:
            segment = _ipv4_udp(packet)
        elif ethertype == _ETH_IPV6:
            segment = _ipv6_udp(packet)
        else:
            continue
        payload = _udp_payload(segment, port)
        if payload is not None:
            out.append(payload)
    return out


# --- writing -----------------------------------------------------------------


def _checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_packet(payload: bytes, src: str, dst: str, src_port: int, dst_port: int) -> bytes:
    """An IPv4 or IPv6 packet (by the address family) carrying one UDP datagram."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"src {src} and dst {dst} are of different IP versions")
    udp_len = _UDP.size + len(payload)
    if udp_len > 0xFFFF:
        raise ValueError(f"UDP payload of {len(payload)} bytes is too large")
    if s.version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, s.packed, d.packed)
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        # UDP checksum 0 means "none" in IPv4
        return header + _UDP.pack(src_port, dst_port, udp_len, 0) + payload
    # IPv6 forbids a zero UDP checksum: compute it over the pseudo-header.
    pseudo = s.packed + d.packed + struct.pack("!I3xB", udp_len, 17)
    checksum = _checksum(pseudo + _UDP.pack(src_port, dst_port, udp_len, 0) + payload) or 0xFFFF
    header = struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, 64, s.packed, d.packed)
    return header + _UDP.pack(src_port, dst_port, udp_len, checksum) + payload


def ethernet_frame(packet: bytes) -> bytes:
    """Wrap an IP packet in Ethernet between two locally administered MACs."""
    ethertype = _ETH_IPV4 if packet[0] >> 4 == 4 else _ETH_IPV6
    return bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", ethertype) + packet


def write_pcap(frames: list[bytes], linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """A classic (microsecond, little-endian) pcap of frames, 1 ms apart."""
    out = [struct.pack("<" + _GLOBAL.format, _MAGIC_USEC, 2, 4, 0, 0, 262144, linktype)]
    for i, frame in enumerate(frames):
        # Fixed, made-up timestamps keep the output deterministic.
        sec, usec = 1_700_000_000 + i // 1000, (i % 1000) * 1000
        out.append(struct.pack("<" + _RECORD.format, sec, usec, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


def write_udp_pcap(
    payloads: list[bytes],
    dst_port: int = 6343,
    src: str = "192.0.2.1",
    dst: str = "192.0.2.2",
    *,
    src_port: int = 50000,
) -> bytes:
    """A pcap of synthetic Ethernet/IP/UDP frames, one per payload."""
    return write_pcap([ethernet_frame(udp_packet(p, src, dst, src_port, dst_port)) for p in payloads])
