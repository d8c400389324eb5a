"""User-space instructions per sample of the agent's per-batch work, counted by valgrind's callgrind: a
figure the machine's load does not move, unlike `hwsflow bench`'s timings.

    python -m hwsflow.tools.bench_callgrind

The work is what receive.drain does with one recvmmsg batch, less the system calls: SamplePipeline.feed_slots
over the benchmark's replayed messages, then the send of the datagrams it finished to a collector on
loopback (CollectorSet.send_loaded from the compiled loop's Outbox; take() and CollectorSet.send on the
Python path).  Each figure is the difference of two callgrind runs (LONG and SHORT batches) divided by the
samples between them, so start-up and imports cancel out.  Needs valgrind (tools/setup-test-env installs it).
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import tempfile

from hwsflow.linux.collectors import open_collectors
from hwsflow.linux.mmsg import RecvBuffer
from hwsflow.tools.bench import FAMILY_ID, PORTS, SEQ_OFFSET, bench_pipeline, templates

SHORT, LONG = 20, 220  # batches of the two runs
BATCH_SIZES = (128, 16)  # a full recvmmsg call, and a short one (a receiver that keeps up wakes to few)
_COLLECTED = re.compile(r"Collected : (\d+)")


def work(batches: int, size: int, compiled: bool) -> None:
    """The measured work, `batches` times over the same `size` slots."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # never read: the kernel drops what does not fit, the send costs the same
    collectors, _errors = open_collectors([("127.0.0.1", sink.getsockname()[1])])
    pipeline = bench_pipeline(compiled=compiled)
    messages = templates(FAMILY_ID, PORTS)
    rbuf = RecvBuffer()
    lengths = []
    for i in range(size):
        msg = messages[i % PORTS]
        struct.pack_into("=I", msg, SEQ_OFFSET, i // PORTS + 1)
        rbuf.area[i * rbuf.stride:i * rbuf.stride + len(msg)] = bytes(msg)
        lengths.append(len(msg))
    for _ in range(batches):
        pipeline.feed_slots(rbuf.area, lengths, rbuf.stride, 5)
        outbox = pipeline.outbox
        if outbox is not None:
            collectors.send_loaded(outbox)
            outbox.clear()
        elif datagrams := pipeline.take():
            collectors.send(datagrams)
    collectors.close()
    sink.close()


def _instructions(batches: int, size: int, compiled: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={os.path.join(tmp, 'out')}", sys.executable,
             "-m", "hwsflow.tools.bench_callgrind", "--child", str(batches), str(size), str(int(compiled))],
            capture_output=True, text=True, check=True)
    found = _COLLECTED.search(out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output: {out.stderr[-500:]}")
    return int(found.group(1))


def per_sample(size: int, compiled: bool) -> float:
    """Instructions per sample with batches of `size` messages."""
    return (_instructions(LONG, size, compiled) - _instructions(SHORT, size, compiled)) / ((LONG - SHORT) * size)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        work(int(argv[1]), int(argv[2]), argv[3] == "1")
        return 0
    for compiled in (True, False):
        path = "compiled" if compiled else "python"
        figures = ", ".join(f"{per_sample(size, compiled):,.0f} in batches of {size}" for size in BATCH_SIZES)
        print(f"{path}: instructions per sample: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
