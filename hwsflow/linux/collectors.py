"""The sFlow collectors: resolved addresses, non-blocking UDP sockets, per-collector counters.

A collector that is unreachable or refuses never blocks or slows the others:
every send is non-blocking, and a datagram that fails is counted, not retried.
A name that does not resolve leaves its collector waiting, not the others.

The datagrams of one drain go out with one sendmmsg per collector: from the compiled loop's Outbox,
where it finished them (send_loaded), or copied into a DatagramSender (send).  When one
fails after others of the same call went out, sendmmsg drops its error code
(an ICMP error reported once, such as ECONNREFUSED, is then lost): the datagram
is still counted as an error, and last_error keeps the last reason known.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field
from typing import Any, Protocol

from hwsflow.core.reload import CollectorCounts, carried_counts
from hwsflow.linux.mmsg import DatagramSender

SEND_BUFFER = 4 << 20  # bursts of datagrams must not fail for lack of socket buffer
UNREPORTED = "error code dropped by sendmmsg"


@dataclass(slots=True)
class Collector:
    target: str  # as configured, for status and logs
    host: str
    port: int
    sockaddr: tuple[Any, ...] | None = None  # None until the name resolves and a socket is connected to it
    # connected, so that an ICMP port unreachable comes back as ECONNREFUSED on this collector's next send
    sock: socket.socket | None = None
    sent: int = 0
    errors: int = 0
    last_error: str = ""


@dataclass
class CollectorSet:
    collectors: list[Collector] = field(default_factory=list)

    sender: DatagramSender = field(default_factory=DatagramSender)

    def send(self, datagrams: list[bytes]) -> None:
        sender = self.sender
        for start in range(0, len(datagrams), sender.slots):
            sender.load(datagrams[start:start + sender.slots])
            for collector in self.collectors:
                if collector.sock is not None:  # else not resolved yet: retried at each reconcile
                    _send_loaded(sender, collector, collector.sock.fileno())

    def send_loaded(self, outbox: LoadedDatagrams) -> None:
        """Every datagram in outbox (the compiled loop's, where it finished them) to every collector: one
        sendmmsg each from where they already are, no copy; counted as send() counts."""
        if outbox.loaded:
            for collector in self.collectors:
                if collector.sock is not None:
                    _send_loaded(outbox, collector, collector.sock.fileno())

    def carry_over(self, old: CollectorSet) -> None:
        """A reload replaced old with this set: each collector kept keeps its counts (core.reload's rule)."""
        before = {c.target: CollectorCounts(c.sent, c.errors, c.last_error) for c in old.collectors}
        for collector in self.collectors:
            counts = carried_counts(before.get(collector.target), collector.last_error, collector.sock is not None)
            if counts is not None:
                collector.sent, collector.errors, collector.last_error = counts.sent, counts.errors, counts.last_error

    def unresolved(self) -> list[Collector]:
        return [c for c in self.collectors if c.sock is None]

    def resolved(self, collector: Collector, answer: Answer) -> bool:
        """Apply a resolver answer to a collector that has no socket yet; whether it can be sent to now."""
        if isinstance(answer, str):
            collector.last_error = answer
            return False
        family, sockaddr = answer
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            sock.connect(sockaddr)
        except OSError as err:  # no route to it yet: tried again like an unresolved name
            sock.close()
            collector.last_error = f"cannot connect to {sockaddr[0]}: {err.strerror or err}"
            return False
        # until now it had no socket, so its last error can only be why it waited
        collector.sock, collector.sockaddr, collector.last_error = sock, sockaddr, ""
        return True

    def close(self) -> None:
        for collector in self.collectors:
            if collector.sock is not None:
                collector.sock.close()
                collector.sock = None
        self.sender.close()


class LoadedDatagrams(Protocol):
    """Datagrams ready for sendmmsg: DatagramSender once loaded, or the compiled loop's Outbox."""

    @property
    def loaded(self) -> int: ...

    def send(self, fd: int, first: int, /) -> int: ...


def _send_loaded(sender: LoadedDatagrams, collector: Collector, fd: int) -> None:
    """Every datagram loaded in sender to one collector: each one sent or counted as an error."""
    first = 0
    while first < sender.loaded:
        try:
            first += (sent := sender.send(fd, first))
            collector.sent += sent
            if first == sender.loaded:
                return
            collector.last_error = collector.last_error or UNREPORTED  # datagram `first` failed, code dropped
        except OSError as err:  # ECONNREFUSED from an earlier ICMP, EAGAIN, ENETUNREACH...
            collector.last_error = errno.errorcode.get(err.errno or 0, str(err))
        collector.errors += 1
        first += 1


UNRESOLVED = "cannot resolve"
Answer = tuple[int, tuple[Any, ...]] | str  # (family, sockaddr), or why the name did not resolve


def format_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve(host: str, port: int) -> Answer:
    """(family, sockaddr) of a collector, or the error text; blocking, so the agent runs it in a thread."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    except (socket.gaierror, UnicodeError) as err:
        reason = err.strerror if isinstance(err, socket.gaierror) else str(err)
        return f"{UNRESOLVED} {host!r}: {reason}"
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, sockaddr


def collector_set(targets: list[tuple[str, int]], answers: list[Answer]) -> CollectorSet:
    """Every target, in order, with a socket for each that resolved; the others wait, unresolved."""
    result = CollectorSet()
    for (host, port), answer in zip(targets, answers, strict=True):
        collector = Collector(format_target(host, port), host, port)
        result.collectors.append(collector)
        result.resolved(collector, answer)
    return result


def open_collectors(targets: list[tuple[str, int]]) -> tuple[CollectorSet, list[str]]:
    """collector_set with names resolved here, blocking (for tools, not the agent's event loop),
    and one error line per name that did not resolve."""
    result = collector_set(targets, [resolve(host, port) for host, port in targets])
    return result, [f"collector {c.target}: {c.last_error}" for c in result.unresolved()]
