"""The psample receive loop, shared by the agent and the benchmark so both measure the same code."""

from __future__ import annotations

import errno
import socket

from hwsflow.collectors import CollectorSet
from hwsflow.pipeline import SamplePipeline

BATCH = 1024  # messages read per wakeup before yielding to timers and signals


def drain(sock: socket.socket, buf: bytearray, pipeline: SamplePipeline, collectors: CollectorSet,
          uptime_ms: int, batch: int = BATCH) -> tuple[int, int]:
    """Read up to batch messages, feed them, send the finished datagrams: (messages read, ENOBUFS seen)."""
    # written for speed on purpose: one clock reading and one send per wakeup, locals bound once
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
            enobufs += 1  # the kernel dropped samples; GROUP_SEQ gaps say how many per port
            continue
        read += 1
        feed(buf, nbytes, uptime_ms)
    datagrams = pipeline.take()
    if datagrams:
        collectors.send(datagrams)
    return read, enobufs
