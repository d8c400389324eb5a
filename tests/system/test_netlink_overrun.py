"""A uvloop trap we measured: a netlink socket that overflows with ENOBUFS
polls EPOLLERR, and uvloop (libuv) then stops watching it for good.  hwsflow's netlink sockets set
NETLINK_NO_ENOBUFS, so an overrun is only counted and the reader goes on.

Run in a private network namespace (unshare -n), where links come and go without touching the host.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers.paths import REPO

DEADLINE = 60.0

GUEST = r"""
import asyncio, json, socket, subprocess, sys, time
import uvloop
from hwsflow.linux import rtnl_events
from hwsflow.linux.psample_socket import no_enobufs

def main(protect):
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's minimum: overflows at once
    sock.bind((0, rtnl_events.RTMGRP_LINK))
    if protect:
        no_enobufs(sock)
    buf = bytearray(1 << 16)
    seen = []
    def on_readable():
        while True:
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError:
                continue  # ENOBUFS: go on reading
            seen.extend(e.ifindex for e in rtnl_events.parse_events(buf, n) if e.kind == rtnl_events.RTM_NEWLINK)
    async def run():
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), on_readable)
        # while the loop does not run, the socket overflows (pyroute2 cannot run on uvloop: `ip` does it)
        batch = "".join(f"link add burst{i} type bridge\n" for i in range(100))
        subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
        await asyncio.sleep(0)  # let the reader drain what fit
        subprocess.run(["ip", "link", "add", "after", "type", "bridge"], check=True)
        after = socket.if_nametoindex("after")
        start = time.monotonic()
        while after not in seen and time.monotonic() - start < 5:
            await asyncio.sleep(0.05)  # polling the condition, with a deadline
        return after in seen
    return uvloop.run(run())

print(json.dumps(main(sys.argv[1] == "protect")))
"""


def _run(mode: str) -> bool:
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", GUEST, mode], cwd=REPO, capture_output=True,
                          text=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_without_no_enobufs_uvloop_stops_reading_an_overflowed_netlink_socket():
    # the trap itself: if this ever passes, uvloop changed and the reason for no_enobufs is gone
    assert _run("bare") is False


def test_with_no_enobufs_the_reader_goes_on_after_an_overrun():
    assert _run("protect") is True
