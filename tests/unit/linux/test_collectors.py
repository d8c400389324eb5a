"""Collectors: a name that does not resolve or a collector that refuses never costs the others a datagram."""

from __future__ import annotations

import socket

import errno

import pytest

from hwsflow.core import fastpath
from hwsflow.linux.collectors import UNREPORTED, Collector, _send_loaded, collector_set, open_collectors, resolve


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)  # a deadline for datagrams already sent on loopback, not a wait for an outcome
    return sock


def _closed_port() -> int:
    sock = _listener()
    port = sock.getsockname()[1]
    sock.close()
    return port


# the two ways datagrams reach CollectorSet: a list (copied into its DatagramSender), or the compiled loop's
# Outbox, sent from where it finished them; counted alike
SENDS = pytest.mark.parametrize("how", ["list", "outbox"])


def _deliver(collectors, datagrams: list[bytes], how: str) -> None:
    if how == "list":
        collectors.send(datagrams)
        return
    outbox = fastpath.module().Outbox()
    for datagram in datagrams:
        outbox.append(datagram)
    collectors.send_loaded(outbox)


def test_an_unresolvable_name_waits_while_the_others_get_every_datagram():
    good = _listener()
    port = good.getsockname()[1]
    targets = [("name.invalid", 6343), ("127.0.0.1", port)]
    answers = [resolve(*t) for t in targets]
    assert isinstance(answers[0], str) and answers[0].startswith("cannot resolve 'name.invalid'")
    collectors = collector_set(targets, answers)
    assert [c.target for c in collectors.collectors] == ["name.invalid:6343", f"127.0.0.1:{port}"]
    collectors.send([b"one", b"two"])
    assert [good.recv(100), good.recv(100)] == [b"one", b"two"]
    waiting, sending = collectors.collectors
    assert (waiting.sent, waiting.errors, sending.sent) == (0, 0, 2)
    assert collectors.unresolved() == [waiting]
    assert waiting.last_error.startswith("cannot resolve")
    # the name resolves later (here: to the same listener): it is sent to from then on
    assert collectors.resolved(waiting, resolve("127.0.0.1", port))
    collectors.send([b"three"])
    assert [good.recv(100), good.recv(100)] == [b"three", b"three"]
    assert (waiting.sent, waiting.last_error, collectors.unresolved()) == (1, "", [])
    collectors.close()
    good.close()


@SENDS
def test_a_refusing_collector_counts_errors_and_blocks_no_one(how):
    good = _listener()
    targets = [("127.0.0.1", _closed_port()), ("127.0.0.1", good.getsockname()[1])]
    collectors, errors = open_collectors(targets)
    assert errors == []
    for i in range(20):  # the ICMP port unreachable of one send makes a later one fail with ECONNREFUSED
        _deliver(collectors, [b"%d" % i], how)
    assert [good.recv(100) for _ in range(20)] == [b"%d" % i for i in range(20)]
    refusing, sending = collectors.collectors
    assert sending.sent == 20 and sending.errors == 0
    assert refusing.errors > 0 and refusing.sent + refusing.errors == 20
    assert refusing.last_error == "ECONNREFUSED"
    collectors.close()
    good.close()


def test_open_collectors_names_each_target_that_did_not_resolve():
    _collectors, errors = open_collectors([("name.invalid", 6343), ("::1", 6343)])
    assert len(errors) == 1 and errors[0].startswith("collector name.invalid:6343: cannot resolve")


def test_one_send_of_many_datagrams_delivers_each_in_order():
    """More datagrams than the sender's slots, and more bytes than its area: all arrive, in order."""
    good = _listener()
    good.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    collectors, _errors = open_collectors([("127.0.0.1", good.getsockname()[1])])
    datagrams = [bytes([i]) * (100 + i) for i in range(150)]
    datagrams[60:75] = [b"%02d" % i * 4500 for i in range(15)]  # 9000 bytes each: the area grows
    collectors.send(datagrams)
    assert [good.recv(10000) for _ in datagrams] == datagrams
    (sending,) = collectors.collectors
    assert (sending.sent, sending.errors) == (150, 0)
    assert len(collectors.sender.area) > 64 * 1500  # it grew
    collectors.close()
    collectors.close()  # a second close is harmless
    good.close()


@SENDS
def test_a_refusing_collector_counts_errors_within_one_send(how):
    good = _listener()
    collectors, _errors = open_collectors([("127.0.0.1", _closed_port()), ("127.0.0.1", good.getsockname()[1])])
    for _ in range(3):
        _deliver(collectors, [b"%d" % i for i in range(20)], how)
    refusing, sending = collectors.collectors
    assert [good.recv(100) for _ in range(60)] == [b"%d" % i for i in range(20)] * 3
    assert sending.sent == 60 and sending.errors == 0
    assert refusing.errors > 0 and refusing.sent + refusing.errors == 60
    assert refusing.last_error in ("ECONNREFUSED", UNREPORTED)
    collectors.close()
    good.close()


def test_an_outbox_sends_more_datagrams_than_one_sendmmsg_takes_in_order():
    """1024 messages is the most one sendmmsg call takes: the Outbox sends the rest in further calls."""
    good = _listener()
    good.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    collectors, _errors = open_collectors([("127.0.0.1", good.getsockname()[1])])
    datagrams = [i.to_bytes(2, "big") * (50 + i % 700) for i in range(2500)]
    _deliver(collectors, datagrams, "outbox")
    assert [good.recv(2000) for _ in datagrams] == datagrams
    (sending,) = collectors.collectors
    assert (sending.sent, sending.errors) == (2500, 0)
    collectors.close()
    good.close()


def test_an_outbox_holds_copies_and_refuses_what_it_cannot_send():
    outbox = fastpath.module().Outbox()
    data = bytearray(b"abc")
    outbox.append(data)
    outbox.append(memoryview(b"0123456789")[2:5])
    data[0:1] = b"X"  # a copy was taken
    assert (outbox.loaded, outbox.datagrams()) == (2, [b"abc", b"234"])
    assert outbox.send(-1, 2) == 0  # nothing from there on: no system call
    with pytest.raises(OSError) as err:
        outbox.send(-1, 0)
    assert err.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        outbox.send(-1, 3)
    outbox.clear()
    assert (outbox.loaded, outbox.datagrams()) == (0, [])


class _ScriptedSender:
    """sendmmsg's answers, scripted: a count sent, or an errno raised."""

    def __init__(self, loaded: int, answers: list[int | OSError]) -> None:
        self.loaded, self.answers, self.calls = loaded, answers, []

    def send(self, fd: int, first: int) -> int:
        self.calls.append(first)
        answer = self.answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


def test_every_loaded_datagram_is_sent_or_counted_once():
    # 10 loaded: 3 go and the 4th fails with its code dropped, 2 go and the 7th fails the same way,
    # the 8th fails with EAGAIN, the last 2 go
    sender = _ScriptedSender(10, [3, 2, OSError(errno.EAGAIN, "again"), 2])
    collector = Collector("c", "127.0.0.1", 6343)
    _send_loaded(sender, collector, -1)
    assert sender.calls == [0, 4, 7, 8] and sender.answers == []
    assert (collector.sent, collector.errors, collector.last_error) == (7, 3, "EAGAIN")
    # a dropped code does not hide the last reason known
    _send_loaded(_ScriptedSender(2, [1]), collector, -1)
    assert (collector.sent, collector.errors, collector.last_error) == (8, 4, "EAGAIN")
    fresh = Collector("d", "127.0.0.1", 6343)
    _send_loaded(_ScriptedSender(2, [1]), fresh, -1)
    assert (fresh.sent, fresh.errors, fresh.last_error) == (1, 1, UNREPORTED)
