"""Collectors: a name that does not resolve or a collector that refuses never costs the others a datagram."""

from __future__ import annotations

import socket

from hwsflow.collectors import collector_set, open_collectors, resolve


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


def test_a_refusing_collector_counts_errors_and_blocks_no_one():
    good = _listener()
    targets = [("127.0.0.1", _closed_port()), ("127.0.0.1", good.getsockname()[1])]
    collectors, errors = open_collectors(targets)
    assert errors == []
    for i in range(20):  # the ICMP port unreachable of one send makes a later one fail with ECONNREFUSED
        collectors.send([b"%d" % i])
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
