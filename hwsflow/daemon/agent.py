"""The daemon: a thin asyncio (uvloop) shell moving bytes between sockets and the pure cores.

rtnetlink work (links, addresses, tc) runs on one worker thread (hwsflow.linux.rtnl);
the psample socket, the rtnetlink event socket and the control socket are read
on the event loop itself.  Port changes (start-up, link and tc events, the
CLI, reloads) are serialised by one lock and carried out by hwsflow.daemon.ports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError

from hwsflow import __version__

from hwsflow.linux import rtnl_events, tc
from hwsflow.linux.collectors import CollectorSet, collector_set, resolve
from hwsflow.core.config import Config, ConfigError, load_config
from hwsflow.core.backoff import BackoffPolicy
from hwsflow.core.heal import SETTLE, HealSchedule
from hwsflow.core.model import U32_MAX, LinkInfo
from hwsflow.core.missing_ports import MissingPorts
from hwsflow.core.psample_state import PsampleAvailability
from hwsflow.core.reload import AgentIdentity, plan_reload, sequence_carries
from hwsflow.core.control import Disable, Enable, Request, RequestError, Status, error_reply, ok_reply
from hwsflow.linux.control_socket import AlreadyRunning, ControlServer
from hwsflow.core.counters import counter_records
from hwsflow.wire.sflow import DatagramBuilder
from hwsflow.core.groups import GroupTable
from hwsflow.core.identity import agent_address
from hwsflow.daemon.logs import RateLimiter, say as _say
from hwsflow.daemon.ovs import OvsFollower
from hwsflow.core import fastpath
from hwsflow.core.pipeline import SamplePipeline
from hwsflow.daemon.ports import HealOutcome, PortManager
from hwsflow.linux.psample_socket import PsampleSocket, PsampleUnavailable, kernel_drops
from hwsflow.linux.mmsg import RecvBuffer
from hwsflow.daemon.receive import BATCH, drain
from hwsflow.linux.rtnl import RtnlWorker, addresses, link_state, read_link, read_links
from hwsflow.core.status import RateMeter
from hwsflow.linux.systemd import notify

if TYPE_CHECKING:
    from hwsflow.linux.metrics_endpoint import MetricsEndpoint

log = logging.getLogger("hwsflow")

TICK = 1.0  # s: a partly filled datagram waits at most this long; status rates are read this often
PSAMPLE_RETRY = 2.0  # s between attempts while the psample module is absent
POOL_SYNC_INTERVAL = 20.0  # s between pool re-syncs from tc when counter polling is off
RECONCILE_INTERVAL = 10.0  # s: a full check of links and filters backs the events up


class AgentError(Exception):
    """Start-up cannot go on; the message says why."""


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rtnl = RtnlWorker()
        self.groups = GroupTable(config.group_base)
        self.limiter = RateLimiter()  # warnings that repeat: collectors failing, filters deleted again and again
        # the rate each filter runs at under load (max_samples_per_s): decided once a tick by _back_off
        self.backoff = BackoffPolicy(config.max_samples_per_s, config.backoff_hold)
        self.backoff_tc = tc.BackoffTc()  # its socket opens at the first tick that reads counters
        self.ports = PortManager(config, self.rtnl, self.groups, self.limiter, self.backoff, self.backoff_tc)
        self.collectors = CollectorSet()
        self.address = ""
        self.psample: PsampleSocket | None = None
        self.pipeline: SamplePipeline | None = None
        self.builder: DatagramBuilder | None = None
        self.control = ControlServer(config.control_socket, self._handle)
        self.rates = RateMeter()
        self._collector_errors: dict[str, int] = {}
        self.internal_errors = 0  # psample batches lost to a bug in decoding: should stay 0
        self.reloads = {"applied": 0, "rejected": 0}  # SIGHUPs by outcome
        self.metrics: MetricsEndpoint | None = None  # the Prometheus endpoint, when the config asks for one
        self._events: socket.socket | None = None
        self._events_inode = 0
        self._events_drops = 0
        self._started = time.monotonic()
        self.sample_path = fastpath.describe()  # compiled, or python and why: decided once, at start
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # the maintenance task has work: events, a reload
        self._lock = asyncio.Lock()  # one port change at a time
        self._dirty_links: set[int] = set()
        self.heals = HealSchedule()  # when to check a port's filters again, and what failures are worth saying
        self._full_reconcile = False
        self._resolving: asyncio.Task[None] | None = None
        self._reload = False
        self._rxbuf = RecvBuffer()  # written for speed: up to 128 psample messages per recvmmsg call
        self._evbuf = bytearray(1 << 16)
        self.psample_state = PsampleAvailability(time.monotonic())
        self._psample_drops = 0  # the psample socket's kernel drop count, as last read
        self._backoff_seen: tuple[float, int] | None = None  # (when, samples + drops + overruns) at the last tick
        self.missing = MissingPorts()  # named ports not there yet: INFO, ERROR only when one stays away
        self.ovs = OvsFollower(config, self._on_ovs_change)  # Open vSwitch's bridges, for `bridge:` rules and status
        self._ovs_dirty = False

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    # ---------------------------------------------------------------- start-up

    async def start(self) -> None:
        try:
            self.control.acquire()
        except AlreadyRunning as err:
            raise AgentError(str(err)) from None
        except OSError as err:
            raise AgentError(f"control socket {self.config.control_socket}: {err.strerror or err}") from None
        self._serve_metrics(self.config)  # before any tc state changes: a port in use ends the start cleanly
        await self._open_output(self.config)
        # join psample before installing filters, so no sample is built unheard; when the module is
        # absent, the first sample filter loads it (act_sample depends on psample), so install anyway
        psample_ready = self._try_psample()
        # listen to link and tc events before reading the links, so no change falls in between
        self._events = rtnl_events.open_event_socket()
        self._events_inode = os.fstat(self._events.fileno()).st_ino
        self._events_drops = kernel_drops(self._events_inode) or 0
        asyncio.get_running_loop().add_reader(self._events.fileno(), self._on_rtnl_event)
        await self.ovs.start()  # bridge ports are selected with the others when Open vSwitch answers at once
        async with self._lock:
            links = await self._read_links()
            self._set_links(links)
            await self.ports.reconcile(links)
            await self.ports.remove_stale()
        self._expect_named_ports()
        self._schedule_retries()
        await self.control.start()
        log.info("sampling %d ports through %d psample groups; control socket %s", len(self.groups.sources),
                 len(self.groups.by_group), self.config.control_socket)
        log.info("sample path: %s", self.sample_path)
        if not psample_ready:
            self._try_psample()  # installing a sample filter has loaded the module, usually

    async def _read_links(self) -> dict[int, LinkInfo]:
        """The host's links, each with the Open vSwitch bridges it is a port of."""
        links = await self.rtnl.call(read_links)
        return {ifindex: self.ovs.annotate(link) for ifindex, link in links.items()}

    def _present_names(self) -> list[str]:
        return [link.ifname for link in self.ports.links.values()]

    def _expect_named_ports(self) -> None:
        for line in self.missing.expect(self.config.named_ports(), self._present_names(), time.monotonic()):
            _say(line)

    async def _open_output(self, config: Config) -> None:
        """Agent address, collectors (names resolved now) and the datagram builder, for config."""
        address = str(agent_address(config.agent, await self.rtnl.call(addresses)))
        targets = [(t.host, t.port) for t in config.targets]
        collectors = collector_set(targets, await self._resolve(targets))
        for collector in collectors.unresolved():
            # WARNING, not ERROR: a name that does not resolve yet is retried, and its resolution said at INFO
            log.warning("collector %s: %s; the others get every datagram, and this name is tried again every %.0f s",
                      collector.target, collector.last_error, RECONCILE_INTERVAL)
        builder = DatagramBuilder(address, config.sub_agent_id, config.datagram_size, config.expanded)
        if self.builder is not None:
            self._send_finished(flush=True)
            old = AgentIdentity(self.address, self.config.sub_agent_id)
            if sequence_carries(old, AgentIdentity(address, config.sub_agent_id)):
                builder.sequence = self.builder.sequence
        collectors.carry_over(self.collectors)
        self.collectors.close()
        self.collectors, self.builder, self.address = collectors, builder, address
        if self.pipeline is not None:
            self.pipeline.set_builder(builder)
        log.info("agent address %s, sub-agent %d, collectors %s", address, config.sub_agent_id,
                 ", ".join(c.target for c in collectors.collectors))

    async def _resolve(self, targets: list[tuple[str, int]]) -> list[Any]:
        """Resolve names in threads: a slow DNS server must not stall the samples on the event loop."""
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(None, resolve, h, p) for h, p in targets)))

    async def _retry_unresolved(self) -> None:
        collectors = self.collectors
        waiting = collectors.unresolved()
        if not waiting:
            return
        answers = await self._resolve([(c.host, c.port) for c in waiting])
        if collectors is not self.collectors:
            return  # a reload replaced them meanwhile, with names resolved afresh
        for collector, answer in zip(waiting, answers):
            if collectors.resolved(collector, answer):
                log.info("collector %s: resolved to %s; sending to it now", collector.target, collector.sockaddr[0])
            else:
                self.limiter.warn(log, ("unresolved", collector.target), "collector %s: %s",
                                  collector.target, collector.last_error)

    def _try_psample(self) -> bool:
        """Join psample's "packets" group now; False (logged once) when the module is absent."""
        if self.psample is not None:
            return True
        try:
            self.psample = PsampleSocket(self.config.rcvbuf)
        except PsampleUnavailable as err:
            _say(self.psample_state.absent(str(err), time.monotonic(), self.ports.has_own_filters(),
                                           self.ports.has_receive_only(), PSAMPLE_RETRY))
            return False
        _say(self.psample_state.joined())
        if self.psample.rcvbuf < self.config.rcvbuf:
            log.warning("psample receive buffer is %d bytes, less than the %d asked for",
                        self.psample.rcvbuf, self.config.rcvbuf)
        assert self.builder is not None
        self.pipeline = SamplePipeline(self.builder, self.groups, self.psample.family.id,
                                       compiled=self.sample_path == "compiled")
        self.pipeline.set_links(list(self.ports.links))
        asyncio.get_running_loop().add_reader(self.psample.fileno(), self._on_readable)
        return True

    async def _wait_psample(self) -> None:
        """Retry until psample appears or the agent is told to stop."""
        while not self._try_psample():
            try:
                await asyncio.wait_for(self._stop.wait(), PSAMPLE_RETRY)
                return
            except TimeoutError:
                continue

    def _set_links(self, links: dict[int, Any]) -> None:
        if self.pipeline is not None:
            self.pipeline.set_links(list(links))

    # ---------------------------------------------------------------- samples

    def _on_readable(self) -> None:
        psample, pipeline = self.psample, self.pipeline
        assert psample is not None and pipeline is not None
        try:
            _read, enobufs = drain(psample.sock, self._rxbuf, pipeline, self.collectors, self.uptime_ms(), BATCH)
        except OSError as err:  # not ENOBUFS (drain counts those): say it, keep the loop alive
            self.limiter.warn(log, "psample socket", "psample socket: %s", err)
            return
        except Exception as err:  # noqa: BLE001 - a decoder bug must cost one batch, not the agent
            self.internal_errors += 1
            self.limiter.warn(log, "decode bug", "psample batch dropped by an internal error (%s: %s); "
                              "%d so far", type(err).__name__, err, self.internal_errors)
            return
        psample.enobufs += enobufs

    def _send_finished(self, flush: bool = False) -> None:
        """Send the datagrams the builder has finished; with flush, close the open one first."""
        if self.builder is None:
            return
        if flush:
            self.builder.flush(self.uptime_ms())
        datagrams = self.builder.take()
        if datagrams:
            self.collectors.send(datagrams)

    async def _tick(self) -> None:
        """Once a second: send what waits in the open datagram, read the per-port sample counts."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), TICK)
            except TimeoutError:
                pass
            self._send_finished(flush=True)
            self.rates.update(time.monotonic(), {i: s.samples for i, s in self.groups.sources.items()})
            self._warn_collectors()
            self._check_lost_events()
            for line in self.missing.check(self._present_names(), time.monotonic()):
                _say(line)
            self._check_ovs()

    def _check_lost_events(self) -> None:
        """rtnetlink events the kernel could not queue: whatever they said, a full reconcile finds."""
        drops = kernel_drops(self._events_inode) if self._events is not None else None
        if drops is not None and drops > self._events_drops:
            self.limiter.warn(log, "lost events", "%d rtnetlink events lost; checking every port",
                              drops - self._events_drops)
            self._events_drops = drops
            self._full_reconcile = True
            self._wake.set()

    def _warn_collectors(self) -> None:
        """A collector that fails is said, once a minute at most, never blocking the others."""
        for collector in self.collectors.collectors:
            if collector.errors > self._collector_errors.get(collector.target, 0):
                self.limiter.warn(log, ("collector", collector.target), "collector %s: sending fails (%s); %d errors",
                                  collector.target, collector.last_error, collector.errors)
            self._collector_errors[collector.target] = collector.errors

    # ---------------------------------------------------------------- back-off

    async def _back_off_loop(self) -> None:
        """Once a tick: the back-off decision on every filter's counters, and its changes applied."""
        while True:
            # a plain sleep: under a flood the event loop turns slowly (each turn drains a batch of samples), and
            # wait_for's cancellation would cost the tick several turns; stopping waits for this one at most
            await asyncio.sleep(TICK)
            if self._stop.is_set():
                return
            if self._backoff_idle():
                self.backoff.pause()  # off, or far below the budget: no tc reads, nothing to decide
            else:
                self._back_off()

    def _backoff_idle(self) -> bool:
        """Whether this tick may skip the counters: back-off is off with nothing to restore, or the samples received
        and lost since the last tick (what the hot path counts anyway) are far below the budget."""
        now = time.monotonic()
        seen = sum(s.samples + s.drops for s in self.groups.sources.values()) + self._overruns()
        last, self._backoff_seen = self._backoff_seen, (now, seen)
        if not self.backoff.enabled:
            return not self.backoff.active()
        if last is None or now <= last[0]:
            return False
        return self.backoff.idle(now, max(seen - last[1], 0) / (now - last[0]))

    def _overruns(self) -> int:
        """Messages the psample socket could not take so far (the kernel's drop count, ENOBUFS seen)."""
        if self.psample is None:
            return 0
        drops = self.psample.kernel_drops()
        if drops is not None:  # an unreadable /proc keeps the last count, so it never seems to jump
            self._psample_drops = drops
        return self._psample_drops + self.psample.enobufs

    def _back_off(self) -> None:
        """One tick of back-off, synchronous: the readings and the changes happen between two turns of the event
        loop, so no other port change (each a coroutine) is half done in between, and none holds them up."""
        readings = self.ports.backoff_readings()
        now = time.monotonic()
        for change in self.backoff.tick(now, readings, self._overruns()):
            _say(change.log_line())
            failure = self.ports.change_rate(change.key, change.new)
            if failure is not None:
                # the filter went meanwhile, or samples in hardware (a new filter carries the rate there): healed
                # like any deleted filter, at the rate in force
                log.info("%s; reinstalling it", failure)
                self.heals.filter_lost(change.key[0], now)
                self._wake.set()

    # ---------------------------------------------------------------- counters and pools

    async def _poll_ports(self) -> None:
        """Per port, every `polling` seconds at its own random phase: re-sync the pool, send counters."""
        due: dict[int, float] = {}
        while not self._stop.is_set():
            interval = self.config.polling or POOL_SYNC_INTERVAL  # the pool is re-synced even without counters
            now = time.monotonic()
            for ifindex in set(due) - set(self.groups.sources):
                del due[ifindex]  # the port is no longer watched
            for ifindex, source in list(self.groups.sources.items()):
                # spread ports over the interval so collectors see no synchronised bursts
                when = due.setdefault(ifindex, now + random.uniform(0, interval))
                if when <= now:
                    due[ifindex] = max(when + interval, now)
                    async with self._lock:
                        await self.ports.sync_pool(ifindex)
                    if self.config.polling:
                        await self._send_counters(ifindex, source.ifname)
            delay = min(due.values(), default=now + interval) - time.monotonic()
            try:
                await asyncio.wait_for(self._stop.wait(), max(delay, 0.01))
            except TimeoutError:
                pass

    async def _send_counters(self, ifindex: int, ifname: str) -> None:
        try:
            link = await self.rtnl.call(link_state, ifindex, ifname)
        except (NetlinkError, OSError, ValueError) as err:  # the port went away between polls
            log.debug("port %s: no counters: %s", ifname, err)
            return
        source = self.groups.sources.get(ifindex)
        if source is None or self.builder is None:
            return
        source.counter_seq += 1
        records, count = counter_records(link)
        self.builder.add_counter_sample(self.uptime_ms(), source.counter_seq, 0, ifindex, records, count)
        self._send_finished()

    # ---------------------------------------------------------------- events and self-healing

    def _on_rtnl_event(self) -> None:
        assert self._events is not None
        now = time.monotonic()
        while True:
            try:
                nbytes = self._events.recv_into(self._evbuf)
            except BlockingIOError:
                break
            except OSError as err:  # not ENOBUFS (NETLINK_NO_ENOBUFS): lost events show in _check_lost_events
                log.error("rtnetlink event socket: %s", err)
                break
            for event in rtnl_events.parse_events(self._evbuf, nbytes):
                self._note_event(event, now)
        if self._dirty_links or self.heals.pending() or self._full_reconcile:
            self._wake.set()

    def _note_event(self, event: rtnl_events.Event, now: float) -> None:
        if event.kind in rtnl_events.LINK_EVENTS:
            self._dirty_links.add(event.ifindex)
            return
        port = self.ports.ports.get(event.ifindex)
        if port is None or not port.specs:
            return  # not a port hwsflow installed anything on
        if event.kind == rtnl_events.RTM_NEWQDISC:
            self.heals.qdisc_added(event.ifindex, now)  # ends a wait for that qdisc
            return
        ours = tuple(s.priority for s in port.specs)
        if event.kind == rtnl_events.RTM_NEWTFILTER and event.priority not in ours:
            return  # Open vSwitch's flower rules come and go at other priorities
        # a filter added at hwsflow's priority can take the place of hwsflow's with no deletion event (Open
        # vSwitch's policer, added while hwsflow reinstalled, measured on 6.12): checked like a deletion
        if event.kind == rtnl_events.RTM_DELTFILTER and event.priority not in (0, *ours):
            return  # another program's filter (Open vSwitch's flower rules churn): not ours
        if event.kind == rtnl_events.RTM_DELQDISC and event.parent == tc.TC_H_INGRESS and not port.created_qdisc:
            self.heals.owner_qdisc_lost(event.ifindex, now)
        else:
            self.heals.filter_lost(event.ifindex, now)

    async def _maintain(self) -> None:
        """Acts on link and tc events, reloads, and a periodic full reconcile, one at a time."""
        next_full = time.monotonic() + RECONCILE_INTERVAL
        while not self._stop.is_set():
            now = time.monotonic()
            wake_at = min(next_full, self.heals.next_at() or next_full)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(wake_at - now, 0.0))
            except TimeoutError:
                pass
            if self._stop.is_set():
                return
            if self._reload:
                self._reload = False
                await self._do_reload()
            now = time.monotonic()
            if self._full_reconcile or now >= next_full:
                self._full_reconcile = False
                next_full = now + RECONCILE_INTERVAL
                await self._reconcile_all()
                if self._resolving is None or self._resolving.done():  # a slow DNS must not hold up heals
                    self._resolving = asyncio.create_task(self._retry_unresolved())
            await self._handle_links()
            await self._handle_ovs()
            await self._handle_heals()
            if self.psample is None and self.groups.by_group:
                self._try_psample()  # a filter just installed has loaded the module: listen at once

    async def _reconcile_all(self) -> None:
        async with self._lock:
            try:
                links = await self._read_links()
            except (NetlinkError, OSError) as err:
                log.error("cannot read the links: %s", err)
                return
            self._set_links(links)
            await self.ports.reconcile(links)
            self._schedule_retries()
            for ifindex in list(self.ports.ports):
                if not self.heals.waits_for_owner(ifindex):  # those wait for their qdisc's owner first
                    self.heals.began(ifindex, time.monotonic())  # an event from now on asks for another heal
                    await self._heal(ifindex, True, time.monotonic())

    async def _handle_links(self) -> None:
        if not self._dirty_links:
            return
        dirty, self._dirty_links = self._dirty_links, set()
        async with self._lock:
            links: dict[int, LinkInfo | None] = {}
            for ifindex in sorted(dirty):
                try:
                    link = await self.rtnl.call(read_link, ifindex)
                    links[ifindex] = self.ovs.annotate(link) if link is not None else None
                except (NetlinkError, OSError) as err:
                    log.error("ifindex %d: cannot read the link: %s", ifindex, err)
            if any(link is not None and ifindex not in self.ports.links for ifindex, link in links.items()):
                # new ports: let whatever manages them set them up before hwsflow adds to them
                await asyncio.sleep(SETTLE)
            for ifindex, link in links.items():
                await self.ports.update_link(ifindex, link)
                if link is None or ifindex not in self.ports.ports:
                    self.heals.forget(ifindex)
            self._set_links(self.ports.links)
            self._schedule_retries()

    def _on_ovs_change(self) -> None:
        self._ovs_dirty = True
        self._wake.set()

    async def _handle_ovs(self) -> None:
        """Open vSwitch's bridges changed: the links whose membership changed are planned again, so ports that
        joined a sampled bridge get their filters and ports that left it lose them."""
        if not self._ovs_dirty:
            return
        self._ovs_dirty = False
        async with self._lock:
            changed, joined = self.ovs.changed_links(self.ports.links)
            if joined:
                await asyncio.sleep(SETTLE)  # Open vSwitch sets a new port's qdisc up first: let it
            for ifindex, link in changed.items():
                if ifindex in self.ports.links:  # still there after the wait
                    await self.ports.update_link(ifindex, link)
                    if ifindex not in self.ports.ports:
                        self.heals.forget(ifindex)
            self._set_links(self.ports.links)
            self._schedule_retries()
        self._check_ovs()

    def _check_ovs(self) -> None:
        self.ovs.check({i: self.ports.links[i] for i in self.ports.ports if i in self.ports.links}, time.monotonic())

    async def _handle_heals(self) -> None:
        due = self.heals.due(time.monotonic())
        if not due:
            return
        async with self._lock:
            for item in due:
                await self._heal(item.ifindex, item.may_create_qdisc, time.monotonic())

    async def _heal(self, ifindex: int, may_create_qdisc: bool, now: float) -> None:
        """One heal, its outcome reported to the schedule, which says what it is worth logging."""
        port = self.ports.ports.get(ifindex)
        if port is None:
            self.heals.forget(ifindex)
            return
        outcome = await self.ports.heal(ifindex, may_create_qdisc)
        if outcome.waiting:
            self.heals.qdisc_missing(ifindex, now)
        elif outcome.failure is not None:
            self._report_failure(ifindex, outcome, now)
        else:
            _say(self.heals.healed(ifindex, port.ifname))

    def _report_failure(self, ifindex: int, outcome: HealOutcome, now: float) -> None:
        assert outcome.failure is not None
        if outcome.blocked:
            _say(self.heals.blocked(ifindex, outcome.failure, now))
        else:
            _say(self.heals.failed(ifindex, outcome.failure, now))

    def _schedule_retries(self) -> None:
        """Installs that lost a race with another program, or found their priority taken: healed again."""
        now = time.monotonic()
        for ifindex, outcome in self.ports.take_retries().items():
            self._report_failure(ifindex, outcome, now)
        if self.heals.pending():
            self._wake.set()

    # ---------------------------------------------------------------- reload

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    async def _do_reload(self) -> None:
        """Apply a changed config file: only what changed is touched; an invalid file changes nothing."""
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            await self._reload_config()
        finally:
            notify("READY=1")

    async def _reload_config(self) -> None:
        try:
            new = load_config(self.config.path)
        except ConfigError as err:
            for line in err.lines():
                log.error("reload: %s", line)
            log.error("reload: the running config stays in effect")
            self.reloads["rejected"] += 1
            return
        plan = plan_reload(self.config, new)
        async with self._lock:
            await self._open_output(new)  # collector names are resolved again at every reload
            if plan.rcvbuf is not None and self.psample is not None:
                self.psample.set_rcvbuf(plan.rcvbuf)
            if plan.metrics:
                self._serve_metrics(new, reload=True)
            if plan.control_socket_kept is not None:
                log.warning("reload: control_socket changes take effect at the next restart; still %s",
                            plan.control_socket_kept)
            if plan.regroup:
                for ifindex in list(self.ports.ports):  # every group moves: start the ports afresh
                    await self.ports.unwatch(ifindex)
                    self.heals.forget(ifindex)
                self.groups.rebase(new.group_base)
            self.config = new
            self.backoff.configure(new.max_samples_per_s, new.backoff_hold)
            self.ports.reload(new)
            await self.ovs.reload(new)
            links = await self._read_links()
            self._set_links(links)
            await self.ports.reconcile(links)
            self._schedule_retries()
            self._expect_named_ports()
        self._check_ovs()
        self.reloads["applied"] += 1
        log.info("%s", plan.summary(new.path))

    # ---------------------------------------------------------------- control socket

    async def _handle(self, request: Request) -> bytes:
        try:
            if isinstance(request, Status):
                return ok_reply(status=self.status())
            async with self._lock:
                if isinstance(request, Enable):
                    port = await self.ports.enable(request)
                    self._schedule_retries()
                    self._try_psample()  # the first filter may just have loaded the module
                    log.info("runtime change: port %s enabled at 1-in-%d %s", request.port,
                             port.plan.settings.sampling, port.plan.settings.direction)
                    return ok_reply(message=f"port {request.port}: sampling 1-in-{port.plan.settings.sampling} "
                                            f"{port.plan.settings.direction} (runtime change, until reload)")
                if isinstance(request, Disable):
                    await self.ports.disable(request)
                    log.info("runtime change: port %s disabled", request.port)
                    return ok_reply(message=f"port {request.port}: no longer sampled (runtime change, until reload)")
        except RequestError as err:
            return error_reply(str(err))
        return error_reply("unsupported request")

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        stats = self.pipeline.stats if self.pipeline is not None else None
        ports = []
        for row in self.ports.status_rows():
            source = self.groups.sources.get(row["ifindex"])
            row.update(
                samples_per_s=round(self.rates.rate(row["ifindex"]), 1),
                samples=source.samples if source else 0,
                drops=source.drops if source else 0,
                pool=source.pool & U32_MAX if source else 0,
                pool_total=source.pool if source else 0,  # before the 32-bit wrap: a counter for metrics
                last_sample_age_s=self.rates.age(row["ifindex"], now),
                ovs=self.ovs.port_status(row["port"]),  # who is behind the port, as Open vSwitch knows it
            )
            ports.append(row)
        return {
            "agent": {
                "version": __version__, "pid": os.getpid(), "uptime_s": round(now - self._started, 1),
                "address": self.address, "config": self.config.path,
                "psample": "joined" if self.psample is not None else "waiting for the psample module",
                "enobufs": self.psample.enobufs if self.psample is not None else 0,
                "kernel_drops": self.psample.kernel_drops() if self.psample is not None else None,
                "samples": stats.samples if stats else 0,
                "foreign": stats.foreign if stats else 0,
                "malformed": stats.malformed if stats else 0,
                "internal_errors": self.internal_errors,
                "reloads": dict(self.reloads),
                "metrics": self.metrics.address if self.metrics is not None else None,
                "sample_path": self.sample_path,
                "ovsdb": self.ovs.agent_status(),
            },
            "ports": ports,
            "disabled": sorted(name for name, settings in self.ports.overrides.items() if settings is None),
            "collectors": [
                {"target": c.target, "sent": c.sent, "errors": c.errors, "last_error": c.last_error}
                for c in self.collectors.collectors
            ],
        }

    # ---------------------------------------------------------------- metrics endpoint

    def _serve_metrics(self, config: Config, reload: bool = False) -> None:
        """Start, move or stop the Prometheus endpoint as config says; a failure to listen stops the start,
        and at a reload leaves no endpoint (the error names the key)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if config.metrics is None:
            return
        from hwsflow.linux.metrics_endpoint import MetricsEndpoint, MetricsError  # the client library loads only if used
        try:
            self.metrics = MetricsEndpoint(config.metrics.host, config.metrics.port, self.status,
                                           asyncio.get_running_loop())
        except MetricsError as err:
            if not reload:
                raise AgentError(f"{config.path}: {err}") from None
            log.error("reload: %s; no metrics endpoint until it is fixed", err)
            return
        log.info("metrics endpoint on %s", self.metrics.address)

    # ---------------------------------------------------------------- life cycle

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self.start()
            # ready even while psample is missing: the control socket answers and status says so
            notify("READY=1")
            tasks = [asyncio.create_task(self._poll_ports()), asyncio.create_task(self._maintain()),
                     asyncio.create_task(self._back_off_loop())]
            if self.psample is None:
                tasks.append(asyncio.create_task(self._wait_psample()))
            await self._tick()
            await asyncio.gather(*tasks)
        finally:
            notify("STOPPING=1")
            await self.shutdown()

    async def shutdown(self) -> None:
        """Flush what is pending, then remove hwsflow's filters unless the config keeps them."""
        loop = asyncio.get_running_loop()
        if self._resolving is not None:
            self._resolving.cancel()
        if self._events is not None:
            loop.remove_reader(self._events.fileno())
            self._events.close()
        if self.psample is not None:
            loop.remove_reader(self.psample.fileno())
            self._on_readable()  # samples already queued in the socket still count
            self._send_finished(flush=True)
            self.psample.close()
        if not self.config.keep_filters:
            async with self._lock:
                for ifindex in list(self.ports.ports):
                    await self.ports.unwatch(ifindex)
        if self.metrics is not None:
            self.metrics.close()
        await self.ovs.close()
        await self.control.close()
        self.collectors.close()
        self.rtnl.close()
        self.backoff_tc.close()
        self._rxbuf.close()
