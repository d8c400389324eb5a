"""The sFlow collectors: resolved addresses, non-blocking UDP sockets, per-collector counters.

A collector that is unreachable or refuses never blocks or slows the others:
every send is a non-blocking sendto whose failure is counted, not retried.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

SEND_BUFFER = 4 << 20  # bursts of datagrams must not fail for lack of socket buffer


class CollectorError(Exception):
    """A collector's address could not be resolved."""


@dataclass(slots=True)
class Collector:
    target: str  # as configured, for status and logs
    sockaddr: tuple
    family: int
    sent: int = 0
    errors: int = 0
    last_error: str = ""


@dataclass
class CollectorSet:
    collectors: list[Collector] = field(default_factory=list)
    _sockets: dict[int, socket.socket] = field(default_factory=dict)

    def send(self, datagrams: list[bytes]) -> None:
        for collector in self.collectors:
            sendto = self._sockets[collector.family].sendto
            address = collector.sockaddr
            for datagram in datagrams:
                try:
                    sendto(datagram, address)
                    collector.sent += 1
                except OSError as err:  # ECONNREFUSED from an earlier ICMP, EAGAIN, ENETUNREACH...
                    collector.errors += 1
                    collector.last_error = errno.errorcode.get(err.errno or 0, str(err))

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()


def format_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve(host: str, port: int) -> tuple[int, tuple]:
    """(family, sockaddr) of a collector; names are resolved now, at start or reload."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    except socket.gaierror as err:
        raise CollectorError(f"collector {format_target(host, port)}: cannot resolve {host!r}: {err.strerror}") from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, sockaddr


def open_collectors(targets: list[tuple[str, int]]) -> tuple[CollectorSet, list[str]]:
    """Sockets for every resolvable target, and one error line for each that is not."""
    result = CollectorSet()
    errors: list[str] = []
    for host, port in targets:
        try:
            family, sockaddr = resolve(host, port)
        except CollectorError as err:
            errors.append(str(err))
            continue
        if family not in result._sockets:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            result._sockets[family] = sock
        result.collectors.append(Collector(format_target(host, port), sockaddr, family))
    return result, errors
