"""The daemon: a thin asyncio (uvloop) shell moving bytes between sockets and the pure cores.

rtnetlink work (links, addresses, tc) runs on one worker thread through
pyroute2's sync IPRoute, whose asyncio sockets do not run on uvloop
(REFERENCE section 6).  The psample socket is read on the event loop itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hwsflow import tc
from hwsflow.collectors import CollectorSet, open_collectors
from hwsflow.config import Config, PortSettings
from hwsflow.counters import LinkState, counter_records
from hwsflow.datasource import Direction
from hwsflow.encoder import DatagramBuilder
from hwsflow.groups import GroupTable
from hwsflow.identity import agent_address
from hwsflow.pipeline import SamplePipeline
from hwsflow.receive import BATCH, drain
from hwsflow.psample_socket import PsampleSocket, PsampleUnavailable
from hwsflow.systemd import notify

log = logging.getLogger("hwsflow")

RECV_BUFFER = 1 << 17  # one psample message is at most 64 KiB
FLUSH_INTERVAL = 1.0  # s: a partly filled datagram waits at most this long
PSAMPLE_RETRY = 2.0  # s between attempts while the psample module is absent
POOL_SYNC_INTERVAL = 20.0  # s between pool re-syncs from tc when counter polling is off


class AgentError(Exception):
    """Start-up cannot go on; the message says why."""


class RtnlWorker:
    """Runs rtnetlink calls on one dedicated thread that owns the IPRoute socket."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtnl")
        self._ipr: IPRoute | None = None

    def _run(self, fn: Callable[..., Any], args: tuple) -> Any:
        if self._ipr is None:
            self._ipr = tc.open_rtnl()
        return fn(self._ipr, *args)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn, args)

    def close(self) -> None:
        if self._ipr is not None:
            self._pool.submit(self._ipr.close).result()
        self._pool.shutdown(wait=True)


@dataclass
class WatchedPort:
    """A port hwsflow samples, with what it installed there."""

    ifindex: int
    ifname: str
    settings: PortSettings
    specs: list[tc.FilterSpec] = field(default_factory=list)
    created_qdisc: bool = False


def _directions(setting: str) -> list[Direction]:
    return ["ingress", "egress"] if setting == "both" else [setting]  # type: ignore[list-item]


def _links(ipr: IPRoute) -> list[tuple[int, str]]:
    return [(link["index"], link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]


IFF_UP, IFF_RUNNING, IFF_PROMISC = 0x1, 0x40, 0x100


def _sysfs(ifname: str, name: str) -> str:
    try:
        with open(f"/sys/class/net/{ifname}/{name}", encoding="ascii") as attr:
            return attr.read().strip()
    except OSError:  # virtual links answer EINVAL for speed
        return ""


def _link_state(ipr: IPRoute, ifindex: int, ifname: str) -> LinkState:
    """The port's flags and 64-bit stats (rtnetlink) with speed and duplex (sysfs: rtnetlink has neither)."""
    (msg,) = ipr.get_links(ifindex)
    flags = msg["flags"]
    stats = msg.get_attr("IFLA_STATS64") or {}
    speed = _sysfs(ifname, "speed")
    return LinkState(
        ifindex=ifindex,
        ifname=ifname,
        arphrd=msg["ifi_type"],
        admin_up=bool(flags & IFF_UP),
        oper_up=bool(flags & IFF_RUNNING),
        promisc=bool(flags & IFF_PROMISC),
        speed_bps=int(speed) * 1_000_000 if speed.isdigit() else 0,
        duplex=_sysfs(ifname, "duplex") or "unknown",
        stats={k: v for k, v in dict(stats).items() if isinstance(v, int)},
    )


def _addresses(ipr: IPRoute) -> list[tuple[str, str]]:
    names = dict(_links(ipr))
    return [(names.get(addr["index"], ""), addr.get_attr("IFA_ADDRESS")) for addr in ipr.get_addr()]


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rtnl = RtnlWorker()
        self.groups = GroupTable(config.group_base)
        self.ports: dict[int, WatchedPort] = {}
        self.collectors = CollectorSet()
        self.psample: PsampleSocket | None = None
        self.pipeline: SamplePipeline | None = None
        self._started = time.monotonic()
        self._stop = asyncio.Event()
        self._rxbuf = bytearray(RECV_BUFFER)
        self._ifindexes: list[int] = []
        self._psample_warned = False

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    # ---------------------------------------------------------------- start-up

    async def start(self) -> None:
        cfg = self.config
        address = agent_address(cfg.agent, await self.rtnl.call(_addresses))
        self.collectors, errors = open_collectors([(t.host, t.port) for t in cfg.targets])
        for line in errors:
            log.error("%s", line)
        if not self.collectors.collectors:
            raise AgentError("no collector could be resolved; nothing to send samples to")
        builder = DatagramBuilder(str(address), cfg.sub_agent_id, cfg.datagram_size, cfg.expanded)
        log.info("agent address %s, sub-agent %d, collectors %s", address, cfg.sub_agent_id,
                 ", ".join(c.target for c in self.collectors.collectors))
        # join psample before installing filters, so no sample is built unheard; when the module is
        # absent, the first sample filter loads it (act_sample depends on psample), so install anyway
        psample_ready = self._try_psample(builder)
        links = await self.rtnl.call(_links)
        self._ifindexes = [ifindex for ifindex, _ in links]
        if self.pipeline is not None:
            self.pipeline.set_links(self._ifindexes)
        for ifindex, ifname in links:
            settings = cfg.settings_for(ifname)
            if settings is not None:
                await self.watch(ifindex, ifname, settings)
        for rule in cfg.ports:
            if rule.name is not None and rule.name not in {name for _, name in links}:
                log.error("port %s: no such interface; it is not sampled", rule.name)
        log.info("sampling %d ports through %d psample groups", len(self.groups.sources), len(self.groups.by_group))
        if not psample_ready:
            await self._wait_psample(builder)

    def _try_psample(self, builder: DatagramBuilder) -> bool:
        """Join psample's "packets" group now; False (logged once) when the module is absent."""
        try:
            self.psample = PsampleSocket(self.config.rcvbuf)
        except PsampleUnavailable as err:
            if not self._psample_warned:
                log.error("%s; retrying every %.0f s", err, PSAMPLE_RETRY)
                self._psample_warned = True
            return False
        if self._psample_warned:
            log.info("psample is available now")
        if self.psample.rcvbuf < self.config.rcvbuf:
            log.warning("psample receive buffer is %d bytes, less than the %d asked for",
                        self.psample.rcvbuf, self.config.rcvbuf)
        self.pipeline = SamplePipeline(builder, self.groups, self.psample.family.id)
        self.pipeline.set_links(self._ifindexes)
        asyncio.get_running_loop().add_reader(self.psample.fileno(), self._on_readable)
        return True

    async def _wait_psample(self, builder: DatagramBuilder) -> None:
        """Retry until psample appears or the agent is told to stop."""
        while not self._try_psample(builder):
            try:
                await asyncio.wait_for(self._stop.wait(), PSAMPLE_RETRY)
                return
            except asyncio.TimeoutError:
                continue

    async def watch(self, ifindex: int, ifname: str, settings: PortSettings) -> None:
        """Install hwsflow's filter(s) on a port; a failure is logged with the port's name, others go on."""
        port = WatchedPort(ifindex, ifname, settings)
        for direction in _directions(settings.direction):
            # bound before the filter exists, so not even the first sample is counted as foreign
            binding = self.groups.bind(ifindex, ifname, direction, settings.sampling, settings.header)
            group = binding.group
            spec = tc.FilterSpec(ifindex, ifname, direction, settings.sampling, group, settings.header,
                                 settings.priority, settings.chain, settings.offload)
            try:
                port.created_qdisc |= await self.rtnl.call(tc.ensure_qdisc, ifindex, ifname, direction)
                state = await self.rtnl.call(tc.install, spec)
            except tc.TcError as err:
                log.error("%s", err)
                self.groups.release(ifindex, direction)
                continue
            except (NetlinkError, OSError) as err:  # the port vanished meanwhile, or the kernel said no
                log.error("port %s: cannot install the %s filter: %s", ifname, direction, err)
                self.groups.release(ifindex, direction)
                continue
            port.specs.append(spec)
            binding.sync_tc(state.packets)  # an adopted filter may have counted already
            log.info("port %s (ifindex %d): %s 1-in-%d, header %d, group %d, priority %d, %s",
                     ifname, ifindex, direction, settings.sampling, settings.header, group,
                     settings.priority, _offload_text(state))
        if port.specs or port.created_qdisc:
            self.ports[ifindex] = port

    # ---------------------------------------------------------------- running

    def _on_readable(self) -> None:
        psample, pipeline = self.psample, self.pipeline
        assert psample is not None and pipeline is not None
        _read, enobufs = drain(psample.sock, self._rxbuf, pipeline, self.collectors, self.uptime_ms(), BATCH)
        psample.enobufs += enobufs

    async def _flush_periodically(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), FLUSH_INTERVAL)
            except asyncio.TimeoutError:
                pass
            self._send_finished(flush=True)

    def _send_finished(self, flush: bool = False) -> None:
        """Send the datagrams the builder has finished; with flush, close the open one first."""
        if self.pipeline is None:
            return
        if flush:
            self.pipeline.flush(self.uptime_ms())
        datagrams = self.pipeline.take()
        if datagrams:
            self.collectors.send(datagrams)

    async def _poll_ports(self) -> None:
        """Per port, every `polling` seconds at its own random phase: re-sync the pool, send counters."""
        interval = self.config.polling or POOL_SYNC_INTERVAL  # the pool is re-synced even without counters
        due: dict[int, float] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            for ifindex in set(due) - set(self.groups.sources):
                del due[ifindex]  # the port is no longer watched
            for ifindex, source in list(self.groups.sources.items()):
                # spread ports over the interval so collectors see no synchronised bursts
                when = due.setdefault(ifindex, now + random.uniform(0, interval))
                if when <= now:
                    due[ifindex] = max(when + interval, now)
                    await self._sync_pool(ifindex)
                    if self.config.polling:
                        await self._send_counters(ifindex, source.ifname)
            delay = min(due.values(), default=now + interval) - time.monotonic()
            try:
                await asyncio.wait_for(self._stop.wait(), max(delay, 0.01))
            except asyncio.TimeoutError:
                pass

    async def _sync_pool(self, ifindex: int) -> None:
        """sample_pool from the packet counters of the port's sample actions: the kernel's count, not a guess."""
        port = self.ports.get(ifindex)
        if port is None:
            return
        for spec in port.specs:
            try:
                state = await self.rtnl.call(tc.read_filter, spec)
            except (NetlinkError, OSError) as err:
                log.debug("port %s: cannot read the %s filter: %s", port.ifname, spec.direction, err)
                continue
            binding = self.groups.get(spec.group)
            if state is not None and binding is not None:
                binding.sync_tc(state.packets)
        source = self.groups.sources.get(ifindex)
        if source is not None:
            source.resync_pool(sum(b.tc_total for b in self.groups.by_group.values() if b.source is source))

    async def _send_counters(self, ifindex: int, ifname: str) -> None:
        try:
            link = await self.rtnl.call(_link_state, ifindex, ifname)
        except (NetlinkError, OSError, ValueError) as err:  # the port went away between polls
            log.debug("port %s: no counters: %s", ifname, err)
            return
        source = self.groups.sources.get(ifindex)
        if source is None or self.pipeline is None:
            return
        source.counter_seq += 1
        records, count = counter_records(link)
        self.pipeline.builder.add_counter_sample(self.uptime_ms(), source.counter_seq, 0, ifindex, records, count)
        self._send_finished()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            await self.start()
            notify("READY=1")
            poller = asyncio.create_task(self._poll_ports())
            await self._flush_periodically()
            await poller
        finally:
            notify("STOPPING=1")
            await self.shutdown()

    async def shutdown(self) -> None:
        """Flush what is pending, then remove hwsflow's filters unless the config keeps them."""
        if self.psample is not None:
            asyncio.get_running_loop().remove_reader(self.psample.fileno())
            self._on_readable()  # samples already queued in the socket still count
            self._send_finished(flush=True)
            self.psample.close()
        if not self.config.keep_filters:
            for port in list(self.ports.values()):
                await self._unwatch(port)
        self.collectors.close()
        self.rtnl.close()

    async def _unwatch(self, port: WatchedPort) -> None:
        for spec in port.specs:
            try:
                await self.rtnl.call(tc.uninstall, spec)
            except Exception as err:  # keep removing the others: leave as little behind as possible
                log.error("port %s: cannot remove the %s filter: %s", port.ifname, spec.direction, err)
            self.groups.release(spec.ifindex, spec.direction)
        if port.created_qdisc:
            await self.rtnl.call(tc.remove_qdisc_if_unused, port.ifindex)
        self.ports.pop(port.ifindex, None)
        log.info("port %s: filters removed", port.ifname)


def _offload_text(state: tc.FilterState) -> str:
    if state.in_hw is None:
        return "offload state unknown"
    return "in_hw" if state.in_hw else "not_in_hw (software only: only the slow path is sampled)"
