"""The receive loop: recvmmsg into slots (RecvBuffer) must act exactly as one recv per message.

A SOCK_DGRAM socket pair stands in for the netlink socket: recvmmsg and recv
treat every datagram socket alike, and it needs no root.
"""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwsflow.wire import psample, sflow_ref
from hwsflow.linux.mmsg import RecvBuffer, SendBuffer
from hwsflow.linux.psample_socket import NETLINK_GENERIC, open_generic_socket
from hwsflow.wire.netlink import NLMSG_HDR
from hwsflow.daemon.receive import drain
from test_fastpath import layouts
from test_pipeline import FAMILY, kernel_sample, make_pipeline


class Sink:
    """Stands in for CollectorSet: keeps what drain sends."""

    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def send(self, datagrams: list[bytes]) -> None:
        self.datagrams += datagrams

    def send_loaded(self, outbox) -> None:
        self.datagrams += outbox.datagrams()


@pytest.fixture()
def pair():
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setblocking(False)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    yield rx, tx
    rx.close()
    tx.close()


def drain_all(rx: socket.socket, buf, pipeline, batch: int = 1024) -> tuple[list[bytes], int]:
    sink = Sink()
    total = 0
    while True:
        read, enobufs = drain(rx, buf, pipeline, sink, 42, batch)
        assert enobufs == 0
        total += read
        if read == 0:
            break
    pipeline.flush(42)
    return sink.datagrams + pipeline.take(), total


def through_both(pair, messages: list[bytes], slots: int = 4, slot_size: int = 4096):
    """(datagrams, stats, messages read) via RecvBuffer, then the same via one recv per message."""
    rx, tx = pair
    results = []
    for buf in (RecvBuffer(slots, slot_size), bytearray(1 << 17)):
        pipeline = make_pipeline(header=128)
        for msg in messages:
            tx.send(msg)
        datagrams, read = drain_all(rx, buf, pipeline)
        results.append((datagrams, pipeline.stats, read, pipeline.groups.by_group[1000]))
        if isinstance(buf, RecvBuffer):
            buf.close()
    return results


def test_batched_reads_fill_several_calls_and_keep_order(pair):
    msgs = [psample.build_message(kernel_sample(i), FAMILY) for i in range(11)]  # 3 calls of 4 slots
    (batched, stats, read, _b), (single, stats1, read1, _b1) = through_both(pair, msgs)
    assert read == read1 == 11
    assert batched == single and stats == stats1
    flows = [s for d in batched for s in sflow_ref.parse_datagram(d)["samples"]]
    assert [s["sequence_number"] for s in flows] == list(range(1, 12))


def test_batch_limit_leaves_the_rest_for_the_next_wakeup(pair):
    rx, tx = pair
    for i in range(10):
        tx.send(psample.build_message(kernel_sample(i), FAMILY))
    rbuf = RecvBuffer(4, 4096)
    pipeline = make_pipeline()
    assert drain(rx, rbuf, pipeline, Sink(), 1, batch=5)[0] == 8  # whole calls: 4 + 4 reach the limit
    assert drain(rx, rbuf, pipeline, Sink(), 1, batch=5)[0] == 2
    assert drain(rx, rbuf, pipeline, Sink(), 1, batch=5)[0] == 0
    assert pipeline.stats.samples == 10
    rbuf.close()


def test_message_longer_than_a_slot_is_counted_malformed_not_misread(pair):
    big = psample.build_message(kernel_sample(0, data=bytes(6000), orig_size=6000), FAMILY)
    small = psample.build_message(kernel_sample(1), FAMILY)
    rx, tx = pair
    tx.send(big)
    tx.send(small)
    rbuf = RecvBuffer(4, 4096)
    pipeline = make_pipeline()
    _datagrams, read = drain_all(rx, rbuf, pipeline)
    assert read == 2
    assert (pipeline.stats.malformed, pipeline.stats.samples) == (1, 1)
    rbuf.close()


def test_socket_errors_other_than_enobufs_reach_the_caller():
    rbuf = RecvBuffer(2, 4096)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        fd = sock.fileno()
    with pytest.raises(OSError) as info:
        rbuf.receive(fd)  # closed descriptor: EBADF
    assert info.value.errno == 9
    rbuf.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(layouts, st.integers(0, 3), st.integers(0, 255), st.booleans()), min_size=1,
                max_size=20))
def test_batched_and_single_reads_give_identical_results(pair_factory, specs):
    """Valid and damaged messages, several per datagram at times: the same datagrams, stats and state."""
    messages = []
    for i, (spec, damage, value, glued) in enumerate(specs):
        msg = bytearray(psample.build_message(kernel_sample(i, **spec), FAMILY))
        if damage:
            msg[(damage * 37) % len(msg)] = value
        if damage == 3:
            msg[NLMSG_HDR.size] = psample.CMD_NEW_GROUP
        if glued and messages:
            messages[-1] += bytes(msg)  # two netlink messages in one datagram
        else:
            messages.append(bytes(msg))
    with pair_factory() as pair:
        (batched, stats, read, b), (single, stats1, read1, b1) = through_both(pair, messages)
    assert read == read1 == len(messages)
    assert batched == single
    assert stats == stats1
    assert b == b1 and b.source == b1.source


@pytest.fixture()
def pair_factory():
    """A fresh socket pair per hypothesis example (function fixtures are shared across examples)."""

    class _Pair:
        def __enter__(self):
            self.rx, self.tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.rx.setblocking(False)
            return self.rx, self.tx

        def __exit__(self, *exc):
            self.rx.close()
            self.tx.close()

    return _Pair


def test_send_buffer_sends_each_slot_as_its_own_netlink_message():
    """The benchmark's replay: one sendmmsg, one netlink message per slot, in order; a full socket
    under MSG_DONTWAIT makes send() say how many the kernel took, never raise."""
    if os.geteuid() != 0:
        pytest.fail("netlink unicast to another socket's port id needs root (CI runs as root)")
    messages = [psample.build_message(kernel_sample(seq, data=bytes(range(seq * 10))), FAMILY) for seq in range(1, 7)]
    rx, _rcvbuf = open_generic_socket(1 << 20)
    tx = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
    tx.bind((0, 0))
    sbuf, rbuf = SendBuffer(messages, rx.getsockname()[0]), RecvBuffer(8, 4096)
    try:
        assert sbuf.send(tx.fileno(), 1, 4) == 4
        lengths = rbuf.receive(rx.fileno())
        assert [bytes(rbuf.area[i * rbuf.stride:i * rbuf.stride + n]) for i, n in enumerate(lengths)] == messages[1:5]
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # room for a few messages only
        took = [sbuf.send(tx.fileno(), 0, 6, socket.MSG_DONTWAIT) for _ in range(20)]
        assert 0 < sum(took) < 6 * 20 and took[-1] == 0
    finally:
        sbuf.close()
        rbuf.close()
        rx.close()
        tx.close()


def test_closing_a_recv_buffer_still_viewed_does_not_raise():
    """A view of the area that outlives the reader (a kept traceback's frame) must not make close() fail."""
    rbuf = RecvBuffer(slots=2)
    view = memoryview(rbuf.area)[:84]
    rbuf.close()
    assert view.nbytes == 84  # still readable: the mapping goes when the last view does
    view.release()
