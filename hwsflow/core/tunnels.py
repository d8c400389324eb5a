"""psample's tunnel key as sFlow tunnel structures: which records a flow sample carries, and their fields.

Pure.  The key describes the tunnel a packet arrived on (samples of a port's
ingress: the 0:1024 / 0:1026 / 0:1030 structures) or is about to take (egress:
0:1023 / 0:1025 / 0:1029).  What the key lacks is sent as zero, as the sFlow
structures define unknown fields: the outer packet's length and TCP flags
always, the TOS and ports when the kernel left them out.
"""

from __future__ import annotations

from hwsflow.wire.psample import TunnelKey
from hwsflow.wire.sflow import encode_tunnel_ip, encode_vni

IPPROTO_UDP = 17
VNI_MAX = 0xFFFFFF  # VXLAN and Geneve VNIs are 24 bits; a wider id (a GRE key) is no VNI


def tunnel_records(key: TunnelKey, ingress: bool) -> tuple[bytes, int]:
    """The sFlow records for one sample's tunnel key, and their count.

    The address structure of the key's address family, with a missing end as the zero address; none when
    the key has no address.  (The kernel sends one family; were both there, IPv4 would win: a sample
    never carries more than one address structure.)  The protocol is UDP when the key has a UDP port
    (only UDP encapsulations, VXLAN and Geneve among them, set them), else 0.  The VNI record comes when
    the key has an id of at most 24 bits.
    """
    parts = []
    if key.ipv4_src is not None or key.ipv4_dst is not None:
        src, dst, size = key.ipv4_src, key.ipv4_dst, 4
    else:
        src, dst, size = key.ipv6_src, key.ipv6_dst, 16
    if src is not None or dst is not None:
        protocol = IPPROTO_UDP if key.tp_src is not None or key.tp_dst is not None else 0
        parts.append(encode_tunnel_ip(
            ingress, 0, protocol, src if src is not None else bytes(size), dst if dst is not None else bytes(size),
            key.tp_src or 0, key.tp_dst or 0, 0, key.tos or 0))
    if key.id is not None and key.id <= VNI_MAX:
        parts.append(encode_vni(ingress, key.id))
    return b"".join(parts), len(parts)
