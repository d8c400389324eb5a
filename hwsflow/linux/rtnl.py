"""rtnetlink reads and writes, run on one worker thread through pyroute2's sync IPRoute.

pyroute2's asyncio sockets do not run on uvloop (REFERENCE section 6), so every
call goes through RtnlWorker, whose single thread owns the IPRoute socket: the
calls are serialised and never block the event loop.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hwsflow.linux import tc
from hwsflow.core.model import LinkInfo
from hwsflow.core.counters import LinkState

IFF_UP, IFF_RUNNING, IFF_PROMISC = 0x1, 0x40, 0x100


class RtnlWorker:
    """Runs rtnetlink calls on one dedicated thread that owns the IPRoute socket."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtnl")
        self._ipr: IPRoute | None = None

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._ipr is None:
            self._ipr = tc.open_rtnl()
        return fn(self._ipr, *args)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn, args)

    def close(self) -> None:
        if self._ipr is not None:
            self._pool.submit(self._ipr.close).result()
        self._pool.shutdown(wait=True)


def _link_info(msg: Any) -> LinkInfo:
    switch_id = msg.get_attr("IFLA_PHYS_SWITCH_ID")  # pyroute2 decodes it as "00:15:4d:..."
    ifname = msg.get_attr("IFLA_IFNAME")
    return LinkInfo(
        ifname=ifname,
        switch_id=switch_id.replace(":", "").lower() if switch_id else None,
        port_name=msg.get_attr("IFLA_PHYS_PORT_NAME") or None,
        speed_bps=_speed_bps(ifname),
    )


def read_links(ipr: IPRoute) -> dict[int, LinkInfo]:
    """Every link of the host by ifindex."""
    return {msg["index"]: _link_info(msg) for msg in ipr.get_links()}


def read_link(ipr: IPRoute, ifindex: int) -> LinkInfo | None:
    """One link, or None when it is gone."""
    try:
        (msg,) = ipr.get_links(ifindex)
    except NetlinkError as err:
        if err.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return _link_info(msg)


def _sysfs(ifname: str, name: str) -> str:
    try:
        with open(f"/sys/class/net/{ifname}/{name}", encoding="ascii") as attr:
            return attr.read().strip()
    except OSError:  # virtual links answer EINVAL for speed
        return ""


def _speed_bps(ifname: str) -> int:
    """sysfs speed (Mbit/s) in bit/s; 0 when unknown (-1, empty, or a link that answers EINVAL)."""
    speed = _sysfs(ifname, "speed")
    return int(speed) * 1_000_000 if speed.isdigit() else 0


def link_state(ipr: IPRoute, ifindex: int, ifname: str) -> LinkState:
    """The port's flags and 64-bit stats (rtnetlink) with speed and duplex (sysfs: rtnetlink has neither)."""
    (msg,) = ipr.get_links(ifindex)
    flags = msg["flags"]
    stats = msg.get_attr("IFLA_STATS64") or {}
    return LinkState(
        ifindex=ifindex,
        ifname=ifname,
        arphrd=msg["ifi_type"],
        admin_up=bool(flags & IFF_UP),
        oper_up=bool(flags & IFF_RUNNING),
        promisc=bool(flags & IFF_PROMISC),
        speed_bps=_speed_bps(ifname),
        duplex=_sysfs(ifname, "duplex") or "unknown",
        stats={k: v for k, v in dict(stats).items() if isinstance(v, int)},
    )


def addresses(ipr: IPRoute) -> list[tuple[str, str]]:
    """(interface name, address) of every address of the host, for the agent address election."""
    names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in ipr.get_links()}
    return [(names.get(addr["index"], ""), addr.get_attr("IFA_ADDRESS")) for addr in ipr.get_addr()]


def hosts_of_own_filters(ipr: IPRoute) -> list[tuple[int, str]]:
    """(ifindex, direction) of every hwsflow filter on the host, from a qdisc dump and per-port filter dumps."""
    found = []
    for qdisc in ipr.get_qdiscs():
        if qdisc["parent"] != tc.TC_H_INGRESS:
            continue
        for direction in ("ingress", "egress"):
            if tc.own_groups(ipr, qdisc["index"], direction):
                found.append((qdisc["index"], direction))
    return found
