"""The agent address sFlow datagrams carry: an explicit IP, an interface's address, or an election.

Pure: the agent passes in the host's addresses as (ifname, address) pairs.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _rank(address: Address) -> int:
    """Lower is better.  IPv4 (RFC 1918 included: data-centre hosts use it) before IPv6 global,
    then IPv6 unique-local, then link-local of either family."""
    if address.is_link_local:
        return 3
    if address.version == 4:
        return 0
    return 2 if address in _ULA else 1


_ULA = ipaddress.ip_network("fc00::/7")


def elect(addresses: list[tuple[str, str]], interface: str | None = None) -> Address | None:
    """The best address of interface (or of the whole host when None); None when there is none."""
    candidates = []
    for ifname, text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if address.is_loopback or address.is_unspecified or address.is_multicast:
            continue
        if interface is not None and ifname != interface:
            continue
        candidates.append(address)
    if not candidates:
        return None
    return min(candidates, key=lambda a: (_rank(a), int(a)))  # stable: the lowest address of the best rank


def agent_address(setting: str | None, addresses: list[tuple[str, str]]) -> Address:
    """Resolve the `agent` setting; ValueError names what is missing."""
    if setting is not None:
        try:
            return ipaddress.ip_address(setting)
        except ValueError:
            pass
        found = elect(addresses, setting)
        if found is None:
            raise ValueError(f"agent: interface {setting!r} has no usable address")
        return found
    found = elect(addresses)
    if found is None:
        raise ValueError("agent: no non-loopback address on this host; set `agent` to an IP")
    return found
