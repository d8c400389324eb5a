"""Known test frames, shared by the guest (to send them) and the host tests (to recognise them).

Run as a script inside a network namespace to send frames out of an interface:
    python -m tests.vm.frames IFACE TAG COUNT [FIRST]
    python -m tests.vm.frames IFACE TAG 0 FIRST INTERVAL   # one frame per INTERVAL s until SIGTERM,
                                                            # then print how many were sent
Stdlib only: it starts in a fresh interpreter under software emulation.
"""

from __future__ import annotations

import socket
import struct
import sys

ETHERTYPE = 0x88B5  # IEEE local experimental: the guest's stack ignores these frames
DST = bytes.fromhex("020000000001")
SRC = bytes.fromhex("020000000002")
MAGIC = b"HWSF"
_ID = struct.Struct(">4sHI")  # magic, tag, index


def frame_length(index: int) -> int:
    """Lengths from 60 to 1059 bytes, varied so truncation and frame_length are both exercised."""
    return 60 + (index * 37) % 1000


def make_frame(tag: int, index: int) -> bytes:
    head = DST + SRC + struct.pack(">H", ETHERTYPE) + _ID.pack(MAGIC, tag, index)
    fill = bytes((index + i) & 0xFF for i in range(frame_length(index) - len(head)))
    return head + fill


def identify(header: bytes) -> tuple[int, int] | None:
    """(tag, index) of a test frame from its first bytes, or None."""
    if len(header) < 14 + _ID.size or header[12:14] != struct.pack(">H", ETHERTYPE):
        return None
    magic, tag, index = _ID.unpack_from(header, 14)
    return (tag, index) if magic == MAGIC else None


def send(ifname: str, tag: int, count: int, first: int = 0) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for index in range(first, first + count):
            sock.send(make_frame(tag, index))


def stream(ifname: str, tag: int, first: int, interval: float) -> int:
    """A steady trickle until SIGTERM; the count is exact because the signal only ends the loop."""
    import signal
    import time

    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        while not stop:
            sock.send(make_frame(tag, first + sent))
            sent += 1
            time.sleep(interval)  # pacing the trickle, not waiting for an outcome
    return sent


if __name__ == "__main__":
    if len(sys.argv) > 5:
        print(stream(sys.argv[1], int(sys.argv[2]), int(sys.argv[4]), float(sys.argv[5])), flush=True)
    else:
        send(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
