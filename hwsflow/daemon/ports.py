"""The watched ports: turning plans (config rules, CLI changes) into tc filters and psample group bindings.

Everything that touches a port's filters goes through PortManager: start-up,
link events, deletions by other programs (self-healing), `hwsflow enable` and
`disable`, reloads and shutdown.  The agent serialises these calls; each one
only touches the ports whose plan changed, so the others keep sampling.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from hwsflow.linux import tc
from hwsflow.core.config import Config, PortSettings
from hwsflow.core.model import DIRECTIONS, Direction, LinkInfo
from hwsflow.core.control import Disable, Enable, RequestError
from hwsflow.core.groups import GroupTable
from hwsflow.daemon.logs import RateLimiter
from hwsflow.linux.rtnl import RtnlWorker, hosts_of_own_filters
from hwsflow.wire.netlink import MalformedMessage
from hwsflow.core import sampling
from hwsflow.core.backoff import BackoffPolicy, Key, Reading
from hwsflow.core.selection import PortPlan, changes, enabled_settings, plan_all, plan_port, rate_choice

log = logging.getLogger("hwsflow")


@dataclass
class WatchedPort:
    """A port hwsflow samples (or tried to), with what it installed there."""

    plan: PortPlan
    specs: list[tc.FilterSpec] = field(default_factory=list)
    states: dict[str, tc.FilterState] = field(default_factory=dict)  # by direction, as last read
    created_qdisc: bool = False
    error: str | None = None  # why (a direction of) the port is not sampled; retried when its plan changes
    error_code: str | None = None  # the same as a short code (failure_code), for metrics
    heals: dict[str, int] = field(default_factory=dict)  # filters reinstalled, by what was found (heal_cause)
    # directions whose filter samples in hardware and waits for a heal to reinstall it at back-off's new rate
    rate_reinstalls: set[str] = field(default_factory=set)

    @property
    def ifname(self) -> str:
        return self.plan.ifname

    def spec(self, direction: Direction) -> tc.FilterSpec | None:
        """The filter wanted for direction now: back-off replaces it (a new rate) while other calls await the kernel."""
        return next((spec for spec in self.specs if spec.direction == direction), None)


def failure_code(err: BaseException) -> str:
    """Why a port could not be set up, as a bounded code: the errno name when the kernel refused,
    else `tc_state` (another program's qdisc is in the way, or the filter vanished)."""
    for cause in (err, err.__cause__):
        code = getattr(cause, "code", None) if cause is not None else None
        code = code if isinstance(code, int) else getattr(cause, "errno", None)
        if isinstance(code, int) and code in errno.errorcode:
            return errno.errorcode[code]
    return "tc_state"


PRIORITY_TAKEN = "priority_taken"  # error_code: another program's filter holds hwsflow's priority


def heal_cause(filter_present: bool, qdisc_created: bool) -> str:
    """What a heal found: no qdisc (hwsflow made one again), a filter of ours that differs, or no filter."""
    if qdisc_created:
        return "qdisc_missing"
    return "filter_changed" if filter_present else "filter_missing"


@dataclass(frozen=True)
class HealOutcome:
    """What PortManager.heal found and did on one port."""

    healed: tuple[Direction, ...] = ()  # the directions reinstalled
    waiting: bool = False  # the qdisc is gone and may not be created yet: its owner may be re-creating it
    failure: str | None = None  # why a direction could not be reinstalled (the heal is retried)
    blocked: bool = False  # the failure is another program's filter at hwsflow's priority: no race


def offload_text(state: tc.FilterState | None) -> str:
    if state is None or state.in_hw is None:
        return "unknown"
    return "in_hw" if state.in_hw else "not_in_hw"


class PortManager:
    def __init__(self, config: Config, rtnl: RtnlWorker, groups: GroupTable, limiter: RateLimiter,
                 backoff: BackoffPolicy | None = None, backoff_tc: tc.BackoffTc | None = None) -> None:
        self.config = config
        # back-off's counter reads and rate changes, on a socket of their own used from the event loop: a tick must
        # not queue behind the pool re-syncs, counter polls and heals the worker serves (seconds under a flood)
        self.backoff_tc = backoff_tc or tc.BackoffTc()
        # the rate each filter runs at: its plan's, unless back-off raised it (filters are installed at that one)
        self.backoff = backoff or BackoffPolicy(config.max_samples_per_s, config.backoff_hold)
        self.limiter = limiter
        self.rtnl = rtnl
        self.groups = groups
        self.ports: dict[int, WatchedPort] = {}
        self.links: dict[int, LinkInfo] = {}
        self.overrides: dict[str, PortSettings | None] = {}  # by name, from the CLI, until reload
        self._retries: dict[int, HealOutcome] = {}  # ifindex -> why an install failed for now: heal it again

    def reload(self, config: Config) -> None:
        """A new config file: runtime changes end with it.  The caller reconciles the ports next."""
        self.config = config
        self.overrides.clear()

    def take_retries(self) -> dict[int, HealOutcome]:
        """Ports whose filter install lost a race with another program, or found its priority taken, and why:
        to heal again (soon, or when that priority is free)."""
        retries, self._retries = self._retries, {}
        return retries

    def has_own_filters(self) -> bool:
        """Whether a sample filter of hwsflow's is installed: it has loaded act_sample, and psample with it."""
        return any(port.states for port in self.ports.values())

    def has_receive_only(self) -> bool:
        return any(port.plan.receive_group is not None for port in self.ports.values())

    # ------------------------------------------------------------ whole host

    async def reconcile(self, links: dict[int, LinkInfo]) -> None:
        """Bring every port in line with its plan; ports whose plan is unchanged are not touched."""
        self.links = links
        wanted = plan_all(self.config, links, self.overrides)
        todo = changes({i: p.plan for i, p in self.ports.items()}, wanted)
        for ifindex in todo.remove:
            if ifindex in links:
                await self.unwatch(ifindex)
            else:
                self.forget(ifindex)
        for ifindex in todo.apply:
            await self.apply(wanted[ifindex])

    async def remove_stale(self) -> None:
        """Delete hwsflow filters that no watched port accounts for: left by a run that was killed."""
        mine = {(spec.ifindex, spec.direction) for port in self.ports.values() for spec in port.specs}
        for ifindex, direction in await self.rtnl.call(hosts_of_own_filters):
            if (ifindex, direction) in mine:
                continue
            removed = await self.rtnl.call(tc.remove_own, ifindex, direction)
            name = self.links.get(ifindex, LinkInfo(f"ifindex {ifindex}")).ifname
            log.info("port %s: removed %d %s filter(s) an earlier run left behind", name, removed, direction)

    # ------------------------------------------------------------ one port

    async def update_link(self, ifindex: int, link: LinkInfo | None) -> None:
        """A link appeared, changed or (None) disappeared."""
        if link is None:
            self.links.pop(ifindex, None)
            if ifindex in self.ports:
                self.forget(ifindex)
            return
        self.links[ifindex] = link
        plan = plan_port(self.config, ifindex, link, self.overrides)
        current = self.ports.get(ifindex)
        if plan is None:
            if current is not None:
                await self.unwatch(ifindex)
        elif current is None or current.plan != plan:
            await self.apply(plan)

    async def apply(self, plan: PortPlan) -> None:
        """Make the port sample as plan says, replacing what it had; its data source (sequence numbers,
        pool) stays when only settings change."""
        current = self.ports.get(plan.ifindex)
        port = WatchedPort(plan, created_qdisc=current.created_qdisc if current else False,
                           heals=current.heals if current else {})
        self.ports[plan.ifindex] = port
        wanted_directions = set(plan.directions) if plan.receive_group is None else set()
        for spec in current.specs if current else []:
            if spec.direction not in wanted_directions:
                await self._uninstall(port, spec)
        for direction in DIRECTIONS:
            if direction not in plan.directions:
                self.groups.release(plan.ifindex, direction)
        if plan.receive_group is not None:
            direction = plan.directions[0]
            self.groups.release(plan.ifindex, direction)  # a group of ours goes
            self.groups.bind(plan.ifindex, plan.ifname, direction, plan.settings.sampling,
                             plan.settings.header, wanted=plan.receive_group)
            log.info("port %s (ifindex %d): receive-only, %s samples of psample group %d", plan.ifname,
                     plan.ifindex, direction, plan.receive_group)
            return
        for direction in plan.directions:
            await self._install(port, direction)

    async def _install(self, port: WatchedPort, direction: Direction) -> None:
        plan, settings = port.plan, port.plan.settings
        try:
            # a filter of ours already there (an earlier run was killed) keeps its group: adopted as is
            previous = await self.rtnl.call(tc.own_groups, plan.ifindex, direction)
        except (NetlinkError, OSError):
            previous = []
        bound = self.groups.get(previous[0]) if previous else None
        wanted = previous[0] if previous and (bound is None or bound.source.ifindex == plan.ifindex) else None
        # bound before the filter exists, so not even the first sample is counted as foreign
        binding = self.groups.bind(plan.ifindex, plan.ifname, direction, settings.sampling, settings.header, wanted)
        rate = self.backoff.rate((plan.ifindex, direction), settings.sampling)
        spec = tc.FilterSpec(plan.ifindex, plan.ifname, direction, rate, binding.group,
                             settings.header, settings.priority, settings.chain, settings.offload)
        try:
            port.created_qdisc |= await self.rtnl.call(tc.ensure_qdisc, plan.ifindex, plan.ifname, direction)
            state, adopted = await self.rtnl.call(tc.install, spec)
        except tc.FilterVanished as err:
            # the filter stays wanted, with its group: the agent heals the port again soon
            port.specs.append(spec)
            self._retries[plan.ifindex] = HealOutcome(failure=str(err))
            return
        except tc.PriorityTaken as err:
            # another program's filter is in the way: left alone; the filter stays wanted, with its group,
            # and the agent installs it once that priority is free.  The schedule says it, once.
            port.specs.append(spec)
            port.error, port.error_code = str(err), PRIORITY_TAKEN
            self._retries[plan.ifindex] = HealOutcome(failure=str(err), blocked=True)
            return
        except tc.TcError as err:
            self._failed(port, direction, str(err), failure_code(err))
            return
        except (NetlinkError, OSError) as err:  # the port vanished meanwhile, or the kernel said no
            self._failed(port, direction, f"port {plan.ifname}: cannot install the {direction} filter: {err}",
                         failure_code(err))
            return
        if adopted and not port.created_qdisc:
            port.created_qdisc = await self.rtnl.call(tc.holds_only_own, plan.ifindex)
        port.specs.append(spec)
        port.states[direction] = state
        binding.sync_tc(state.packets)  # an adopted filter may have counted already
        log.info("port %s (ifindex %d): %s 1-in-%d%s, header %d, group %d, priority %d, %s%s%s",
                 plan.ifname, plan.ifindex, direction, rate,
                 f" (backed off from the configured 1-in-{settings.sampling})" if rate != settings.sampling else "",
                 settings.header, binding.group, settings.priority, offload_text(state),
                 " (software only: only the slow path is sampled)" if state.in_hw is False else "",
                 ", adopted the filter an earlier run left" if adopted else "")

    def _failed(self, port: WatchedPort, direction: Direction, message: str, code: str) -> None:
        log.error("%s", message)
        port.error, port.error_code = message, code
        self.groups.release(port.plan.ifindex, direction)

    async def _uninstall(self, port: WatchedPort, spec: tc.FilterSpec) -> None:
        try:
            await self.rtnl.call(tc.uninstall, spec)
        except Exception as err:  # noqa: BLE001 - keep removing the others: leave as little behind as possible
            log.error("port %s: cannot remove the %s filter: %s", port.ifname, spec.direction, err)
        self.groups.release(spec.ifindex, spec.direction)

    async def unwatch(self, ifindex: int) -> None:
        """Stop sampling a port that is still there: remove exactly what hwsflow installed."""
        port = self.ports.pop(ifindex, None)
        if port is None:
            return
        for spec in port.specs:
            await self._uninstall(port, spec)
        for direction in DIRECTIONS:
            self.groups.release(ifindex, direction)
        if port.created_qdisc:
            try:
                await self.rtnl.call(tc.remove_qdisc_if_unused, ifindex)
            except (NetlinkError, OSError) as err:
                log.error("port %s: cannot remove the clsact qdisc hwsflow added: %s", port.ifname, err)
        log.info("port %s: no longer sampled%s", port.ifname, ", filters removed" if port.specs else "")

    def forget(self, ifindex: int) -> None:
        """The port disappeared, and its filters with it."""
        port = self.ports.pop(ifindex, None)
        for direction in DIRECTIONS:
            self.groups.release(ifindex, direction)
        if port is not None:
            log.info("port %s (ifindex %d) disappeared; it is sampled again if it returns", port.ifname, ifindex)

    async def heal(self, ifindex: int, may_create_qdisc: bool = True) -> HealOutcome:
        """Reinstall what another program deleted on the port (Open vSwitch does at port initialisation).
        Failures are not logged here: the agent's HealSchedule decides what they are worth."""
        port = self.ports.get(ifindex)
        if port is None:
            return HealOutcome()
        healed: list[Direction] = []
        failure, blocked = None, False
        for direction in [spec.direction for spec in port.specs]:
            try:
                spec, state = await self._read_in_force(port, direction)
                if spec is None or (state is not None and tc.matches(state, spec)):
                    port.rate_reinstalls.discard(direction)  # back-off went back before the reinstall was due
                    continue
                if not may_create_qdisc and await self.rtnl.call(tc.find_clsact_kind, ifindex) is None:
                    return HealOutcome(tuple(healed), waiting=True)  # its owner may be re-creating it: let it
                created = await self.rtnl.call(tc.ensure_qdisc, spec.ifindex, spec.ifname, direction)
                if created:
                    port.created_qdisc = True  # removed at stop like the one made at install
                elif port.created_qdisc and await self.rtnl.call(tc.find_clsact_kind, ifindex) == "ingress":
                    # hwsflow's clsact went and another program's ingress qdisc took its place (Open vSwitch
                    # at port initialisation): when that one is deleted, its owner is waited for
                    port.created_qdisc = False
                cause = heal_cause(state is not None, created)
                spec = port.spec(direction)  # the rate in force: back-off may have changed it meanwhile
                if spec is None:
                    continue
                state, _ = await self.rtnl.call(tc.install, spec)
                if (in_force := port.spec(direction)) is not None and in_force is not spec:
                    # back-off changed the rate while the filter went in at the old one (its change found the
                    # old filter): changed in place now, as back-off does, the same action; in hardware, anew
                    if state.in_hw:
                        state, _ = await self.rtnl.call(tc.install, in_force)
                    else:
                        state = self.backoff_tc.change_rate(in_force, state.index)
                    spec = in_force
            except tc.PriorityTaken as err:
                failure, blocked = str(err), True
                self._unsampled(port, direction, failure, PRIORITY_TAKEN)
                continue
            except tc.TcError as err:
                failure = str(err)
                self._unsampled(port, direction, failure, failure_code(err))
                continue
            except (NetlinkError, OSError) as err:
                failure = f"port {port.ifname}: cannot reinstall the {direction} filter: {err}"
                self._unsampled(port, direction, failure, failure_code(err))
                continue
            port.states[direction] = state
            binding = self.groups.get(spec.group)
            if binding is not None:
                binding.sync_tc(state.packets)  # a fresh filter counts from 0: the total carries on
            healed.append(direction)
            for_rate = direction in port.rate_reinstalls
            port.rate_reinstalls.discard(direction)
            if for_rate and cause == "filter_changed":  # found at the old rate, not deleted by another program
                log.info("port %s: its %s sample filter reinstalled at 1-in-%d, as back-off asked (it samples in "
                         "hardware, whose rate only a new filter changes)", port.ifname, direction, spec.rate)
                continue  # hwsflow's own doing: no heal to count
            port.heals[cause] = port.heals.get(cause, 0) + 1
            # resolved by hwsflow itself: INFO, and once a minute at most when another program keeps at it
            self.limiter.warn(log, ("healed", port.ifname, direction),
                              "port %s: its %s sample filter was deleted by another program; reinstalled",
                              port.ifname, direction, level=logging.INFO)
        if failure is None and set(port.plan.directions) <= set(port.states):
            port.error = port.error_code = None  # every direction samples again
        return HealOutcome(tuple(healed), failure=failure, blocked=blocked)

    async def _read_in_force(self, port: WatchedPort,
                             direction: Direction) -> tuple[tc.FilterSpec | None, tc.FilterState | None]:
        """The spec in force for direction (None: no longer wanted) and the kernel's filter for it.  Back-off may
        change the rate in place while the reading queues behind the worker: a reading that may predate the
        change is taken again, so a filter changed as wanted is not taken for one that differs.  Should the
        rate change during that one too, the heal reinstalls at the rate in force: a gap, never the old rate."""
        spec, state = port.spec(direction), None
        for _ in range(2):
            if spec is None:
                break
            read_for = spec
            state = await self.rtnl.call(tc.read_filter, read_for)
            spec = port.spec(direction)
            if spec is read_for:
                break
        return spec, state

    @staticmethod
    def _unsampled(port: WatchedPort, direction: Direction, message: str, code: str) -> None:
        """A direction whose filter is not in the kernel: status shows it (no stale state), the spec stays wanted."""
        port.states.pop(direction, None)
        port.error, port.error_code = message, code

    async def sync_pool(self, ifindex: int) -> None:
        """sample_pool from the packet counters of the port's sample actions: the kernel's count, not a guess."""
        port = self.ports.get(ifindex)
        if port is None:
            return
        source = self.groups.sources.get(ifindex)
        pool_when_read = source.pool if source is not None else None  # samples go on arriving during the reads
        for spec in port.specs:
            try:
                state = await self.rtnl.call(tc.read_filter, spec)
            except (NetlinkError, OSError) as err:
                log.debug("port %s: cannot read the %s filter: %s", port.ifname, spec.direction, err)
                continue
            binding = self.groups.get(spec.group)
            if state is not None and binding is not None:
                if port.spec(spec.direction) is spec:
                    # else back-off changed the rate (or a heal the filter) while this reading queued behind the
                    # worker: the state it returned says the old rate, and status must show the new one
                    port.states[spec.direction] = state
                binding.sync_tc(state.packets)
        source = self.groups.sources.get(ifindex)
        if source is not None and port.specs:
            source.resync_pool(sum(b.tc_total for b in self.groups.by_group.values() if b.source is source),
                               pool_when_read)

    # ------------------------------------------------------------ back-off

    def backoff_readings(self) -> list[Reading]:
        """Each installed filter's figures for the back-off decision: its tc packet counter (one dump of every
        sample action, now), the samples its group lost, its configured rate and its port's own budget.
        Blocking, and short: the event loop waits for one netlink dump."""
        try:
            counters, at = self.backoff_tc.counters()
        except (NetlinkError, OSError) as err:
            log.debug("cannot read the sample actions' counters: %s", err)
            counters, at = {}, None
        except MalformedMessage as err:
            # not a passing refusal: every tick would read nothing, and back-off would stop measuring
            self.limiter.warn(log, "action dump", "cannot parse the kernel's sample action counters, so back-off "
                              "measures nothing: %s", err)
            counters, at = {}, None
        readings = []
        for port in self.ports.values():
            if port.plan.receive_group is not None:
                continue  # no filter of hwsflow's: no rate to change
            settings = port.plan.settings
            for spec in port.specs:
                binding = self.groups.get(spec.group)
                if binding is None:
                    continue
                state = port.states.get(spec.direction)
                counter = counters.get(state.index) if state is not None else None
                packets: int | None = None
                if state is not None and counter is not None and (counter.group, counter.rate) == (spec.group, spec.rate):
                    # else the filter is not as hwsflow has it (heal reinstalls it) or the index is another's now.
                    # The pool's tc total is left to the re-syncs: their readings come through the worker, in order,
                    # and one older than this would look like a reinstall there.  A reinstalled filter's counter
                    # starts from 0 again, which the decision takes as no measurement for that tick.
                    packets = counter.packets
                readings.append(Reading((spec.ifindex, spec.direction), port.ifname, settings.sampling, packets,
                                        binding.drops, settings.max_samples_per_s, binding.last_rate, at))
        return readings

    def change_rate(self, key: Key, rate: int) -> str | None:
        """Set the filter's rate in place (the same tc action, its counter and the pool go on); None when done,
        else why not.  The spec takes the new rate either way: a heal reinstalls the filter at the rate in force.

        Not in place for a filter that samples in hardware: the driver (mlx5, mlxsw) took the rate when the filter
        was offloaded, and a change of the action alone does not reach it (the kernel offers a standalone action
        to the drivers' action offload, never to the filter's hardware copy).  The sampling would go on at the
        old rate while status showed the new one; that filter is reinstalled by the heal instead (after its
        settle time), a gap of a delete and an add."""
        ifindex, direction = key
        port = self.ports.get(ifindex)
        current = port.spec(direction) if port is not None else None
        if port is None or current is None:
            return None  # gone meanwhile: nothing to change
        spec = port.specs[port.specs.index(current)] = replace(current, rate=rate)
        state = port.states.get(direction)
        if state is None:
            return f"port {port.ifname}: the {direction} filter is not installed; it is installed at 1-in-{rate}"
        if state.in_hw:
            port.rate_reinstalls.add(direction)
            return f"port {port.ifname}: the {direction} filter samples in hardware, which keeps the rate it was offloaded with"
        try:
            port.states[direction] = self.backoff_tc.change_rate(spec, state.index)
        except (tc.TcError, NetlinkError, OSError) as err:
            port.states.pop(direction, None)
            return str(err)
        return None

    # ------------------------------------------------------------ the CLI's runtime changes

    def _find(self, name: str) -> tuple[int, LinkInfo]:
        for ifindex, link in self.links.items():
            if link.ifname == name:
                return ifindex, link
        raise RequestError(f"port {name}: no such interface")

    async def enable(self, request: Enable) -> WatchedPort:
        ifindex, link = self._find(request.port)
        previous = self.overrides.get(request.port, ...)
        self.overrides[request.port] = enabled_settings(self.config, link, request)
        await self.update_link(ifindex, link)
        port = self.ports.get(ifindex)
        if port is None or port.error is not None:
            # what failed must not linger as a runtime change: go back to what was there
            if previous is ...:
                del self.overrides[request.port]
            else:
                self.overrides[request.port] = previous
            message = port.error if port is not None and port.error else f"port {request.port}: not sampled"
            await self.update_link(ifindex, link)
            raise RequestError(message)
        return port

    async def disable(self, request: Disable) -> None:
        ifindex, link = self._find(request.port)
        if ifindex not in self.ports:
            raise RequestError(f"port {request.port}: not sampled, nothing to disable")
        self.overrides[request.port] = None
        await self.update_link(ifindex, link)

    # ------------------------------------------------------------ status

    def status_rows(self) -> list[dict[str, Any]]:
        rows = []
        for ifindex, port in sorted(self.ports.items(), key=lambda item: item[1].ifname):
            plan = port.plan
            groups = sorted(b.group for b in self.groups.by_group.values() if b.source.ifindex == ifindex)
            if plan.receive_group is not None:
                offload = "receive-only"
            elif not port.states:
                offload = "failed"
            else:
                texts = {offload_text(state) for state in port.states.values()}
                offload = texts.pop() if len(texts) == 1 else "mixed"
            rates = {state.rate for state in port.states.values()}
            keys = [(ifindex, spec.direction) for spec in port.specs]
            in_force = max((self.backoff.rate(key, plan.settings.sampling) for key in keys),
                           default=plan.settings.sampling)
            reasons = [f"{key[1]}: {reason}" if len(keys) > 1 else reason
                       for key in keys if (reason := self.backoff.reason(key)) is not None]
            rows.append({
                "port": port.ifname, "ifindex": ifindex, "groups": groups, "rate": plan.settings.sampling,
                "direction": plan.settings.direction, "offload": offload, "runtime": plan.runtime,
                "error": port.error, "error_code": port.error_code, "heals": dict(port.heals),
                # the filters' rate as the kernel reports it (the highest, should directions differ)
                "current_rate": max(rates) if rates else None,
                "rate_from": sampling.describe(rate_choice(plan)),
                # back-off: the rate hwsflow has the filters at (the highest, should directions differ), and why
                "rate_in_force": in_force,
                "rate_reason": "; ".join(reasons) or None,
            })
        return rows
