"""The psample multicast socket: resolve the family, join "packets", size the buffer, count overruns.

A raw AF_NETLINK socket rather than pyroute2's: pyroute2's asyncio sockets do
not run on uvloop, and its per-message parsing is ~30x slower than
hwsflow.wire.psample (REFERENCE section 6).
"""

from __future__ import annotations

import errno
import os
import socket

from hwsflow.core.model import SO_RCVBUFFORCE
from hwsflow.wire.netlink import Family, NetlinkErrorReply, build_getfamily, parse_family_reply, parse_proc_netlink_drops

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_NO_ENOBUFS = 5
PSAMPLE_FAMILY = "psample"
PACKETS_GROUP = "packets"


class PsampleUnavailable(Exception):
    """The kernel has no psample generic-netlink family (module not loaded)."""


def resolve_family(name: str, timeout: float = 5.0) -> Family:
    """Look a generic-netlink family up by name on a short-lived blocking socket."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        sock.send(build_getfamily(name, seq=1))
        while True:
            try:
                family = parse_family_reply(sock.recv(65536), name)
            except NetlinkErrorReply as err:
                if err.errno == errno.ENOENT:
                    raise PsampleUnavailable(
                        f"the kernel has no {name!r} generic netlink family; load it with `modprobe {name}`"
                    ) from None
                raise OSError(err.errno, f"generic netlink lookup of {name!r} failed") from None
            if family is not None:
                return family


def open_generic_socket(rcvbuf: int) -> tuple[socket.socket, int]:
    """A non-blocking, bound generic-netlink socket and the receive buffer it got."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
    sock.bind((0, 0))
    no_enobufs(sock)
    return sock, set_rcvbuf(sock, rcvbuf)


def set_rcvbuf(sock: socket.socket, rcvbuf: int) -> int:
    """Size sock's receive buffer, beyond net.core.rmem_max where allowed; the size the kernel gave."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # capped by rmem_max
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def no_enobufs(sock: socket.socket) -> None:
    """Overruns counted by the kernel (/proc/net/netlink Drops) instead of reported as ENOBUFS.

    An ENOBUFS overrun also marks the socket congested, and the kernel then drops every new message
    until the reader has emptied the queue; and its socket error (EPOLLERR) makes uvloop stop
    watching the socket for good, so the agent would never read again.
    """
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)


def kernel_drops(inode: int) -> int | None:
    """Messages the kernel dropped on the netlink socket with this inode (/proc/net/netlink)."""
    try:
        with open("/proc/net/netlink", encoding="ascii") as proc:
            return parse_proc_netlink_drops(proc.read(), inode)
    except OSError:
        return None


class PsampleSocket:
    """Non-blocking socket joined to psample's "packets" group."""

    def __init__(self, rcvbuf: int) -> None:
        self.family = resolve_family(PSAMPLE_FAMILY)
        if PACKETS_GROUP not in self.family.groups:
            raise PsampleUnavailable(f"psample family has no {PACKETS_GROUP!r} group: {sorted(self.family.groups)}")
        self.sock, self.rcvbuf = open_generic_socket(rcvbuf)
        # joining "packets" needs CAP_NET_ADMIN since Dec 2023: EPERM here means missing privileges
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, self.family.groups[PACKETS_GROUP])
        self.inode = os.fstat(self.sock.fileno()).st_ino
        self.enobufs = 0  # ENOBUFS seen: stays 0 with NETLINK_NO_ENOBUFS, where kernel_drops counts overruns

    @property
    def port_id(self) -> int:
        port_id: int = self.sock.getsockname()[0]
        return port_id

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_rcvbuf(self, rcvbuf: int) -> None:
        """Resize the receive buffer (a reload's new `rcvbuf`); self.rcvbuf is what the kernel gave."""
        self.rcvbuf = set_rcvbuf(self.sock, rcvbuf)

    def kernel_drops(self) -> int | None:
        """Messages the kernel dropped on this socket (Drops column of /proc/net/netlink)."""
        return kernel_drops(self.inode)

    def close(self) -> None:
        self.sock.close()
