"""The psample receive loop, shared by the agent and the benchmark so both measure the same code."""

from __future__ import annotations

import errno
import socket

from hwsflow.linux.collectors import CollectorSet
from hwsflow.linux.mmsg import RecvBuffer
from hwsflow.core.pipeline import SamplePipeline

BATCH = 1024  # messages read per wakeup before yielding to timers and signals


def drain(sock: socket.socket, buf: RecvBuffer | bytearray, pipeline: SamplePipeline, collectors: CollectorSet,
          uptime_ms: int, batch: int = BATCH) -> tuple[int, int]:
    """Read up to batch messages, feed them, send the finished datagrams: (messages read, ENOBUFS seen).

    With a RecvBuffer, many messages per system call (recvmmsg); with a plain bytearray, one recv each.
    """
    if isinstance(buf, RecvBuffer):
        read, enobufs = _read_batched(sock, buf, pipeline, uptime_ms, batch)
    else:
        read, enobufs = _read_single(sock, buf, pipeline, uptime_ms, batch)
    outbox = pipeline.outbox
    if outbox is not None:  # the compiled loop's: sent from where it finished them
        if outbox.loaded:
            collectors.send_loaded(outbox)
            outbox.clear()
    elif datagrams := pipeline.take():
        collectors.send(datagrams)
    return read, enobufs


def _read_batched(sock: socket.socket, rbuf: RecvBuffer, pipeline: SamplePipeline, uptime_ms: int,
                  batch: int) -> tuple[int, int]:
    receive, feed_slots, area, stride, slots = rbuf.receive, pipeline.feed_slots, rbuf.area, rbuf.stride, rbuf.slots
    fd = sock.fileno()
    read = enobufs = 0
    while read + enobufs < batch:
        try:
            lengths = receive(fd)
        except OSError as err:
            if err.errno != errno.ENOBUFS:
                raise
            enobufs += 1  # the kernel dropped samples; GROUP_SEQ gaps say how many per port
            continue
        read += len(lengths)
        if lengths:
            feed_slots(area, lengths, stride, uptime_ms)
        if len(lengths) < slots:
            break  # the queue is empty: saves the system call that would say so
    return read, enobufs


def _read_single(sock: socket.socket, buf: bytearray, pipeline: SamplePipeline, uptime_ms: int,
                 batch: int) -> tuple[int, int]:
    # written for speed on purpose: locals bound once
    recv_into, feed = sock.recv_into, pipeline.feed
    read = enobufs = 0
    for _ in range(batch):
        try:
            nbytes = recv_into(buf)
        except BlockingIOError:
            break
        except OSError as err:
            if err.errno != errno.ENOBUFS:
                raise
            enobufs += 1
            continue
        read += 1
        feed(buf, nbytes, uptime_ms)
    return read, enobufs
