"""PortManager and back-off with a fake kernel: readings from the tc counter, the rate changed in place on the
same action, a heal that reinstalls at the rate in force, status that shows the rate in force and why."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from hwsflow.core.backoff import BackoffPolicy
from hwsflow.core.config import parse_config
from hwsflow.core.groups import GroupTable
from hwsflow.core.model import LinkInfo
from hwsflow.core.status import render
from hwsflow.daemon.logs import RateLimiter
from hwsflow.daemon.ports import HealOutcome, PortManager
from hwsflow.linux import tc
from hwsflow.wire.netlink import MalformedMessage
from hwsflow.wire.tc_actions import ActionCounter

CONFIG = "targets: [192.0.2.10]\nsampling: 2\nmax_samples_per_s: 1000\nports:\n  - name: eth0\n  - name: eth1\n"


class Kernel:
    """Filters by (ifindex, direction) with an action index and a packet counter; changes keep both."""

    def __init__(self) -> None:
        self.filters: dict[tuple[int, str], tc.FilterState] = {}
        self.next_index = 1
        self.calls: list[str] = []
        self.now = 0.0  # the clock counters() stamps its readings with
        self.in_hw = False  # what the driver did with the filters installed from now on

    def state(self, spec: tc.FilterSpec, index: int, packets: int) -> tc.FilterState:
        return tc.FilterState(ifindex=spec.ifindex, direction=spec.direction, priority=spec.priority,
                              chain=spec.chain, handle=1, protocol=tc.ETH_P_ALL, rate=spec.rate, group=spec.group,
                              trunc=spec.trunc, verdict=-1, cookie=spec.cookie, in_hw=self.in_hw, packets=packets,
                              index=index)

    async def call(self, fn, *args):
        self.calls.append(fn.__name__)
        if fn is tc.install:
            spec = args[0]
            self.filters[spec.ifindex, spec.direction] = self.state(spec, self.next_index, 0)
            self.next_index += 1
            return self.filters[spec.ifindex, spec.direction], False
        if fn is tc.read_filter:
            return self.filters.get((args[0].ifindex, args[0].direction))
        return {tc.own_groups: [], tc.ensure_qdisc: False, tc.holds_only_own: False}[fn]

    # tc.BackoffTc's face: the event loop's own socket for back-off
    def counters(self) -> tuple[dict[int, ActionCounter], float]:
        self.calls.append("counters")
        return {f.index: ActionCounter(f.index, f.rate, f.group, f.packets) for f in self.filters.values()}, self.now

    def change_rate(self, spec: tc.FilterSpec, index: int) -> tc.FilterState:
        self.calls.append("change_rate")
        old = self.filters.get((spec.ifindex, spec.direction))
        if old is None or old.index != index:
            raise tc.FilterVanished(f"port {spec.ifname}: the {spec.direction} sample filter was gone")
        self.filters[spec.ifindex, spec.direction] = dataclasses.replace(old, rate=spec.rate)
        return self.filters[spec.ifindex, spec.direction]

    def count(self, ifindex: int, packets: int) -> None:
        key = (ifindex, "ingress")
        self.filters[key] = dataclasses.replace(self.filters[key], packets=self.filters[key].packets + packets)


def setup() -> tuple[Kernel, PortManager, BackoffPolicy]:
    config = parse_config(CONFIG)
    kernel = Kernel()
    policy = BackoffPolicy(config.max_samples_per_s, config.backoff_hold)
    ports = PortManager(config, kernel, GroupTable(config.group_base), RateLimiter(), policy, kernel)  # type: ignore[arg-type]  # a fake rtnetlink worker and socket
    return kernel, ports, policy


def test_a_flooded_port_is_changed_in_place_and_status_says_why():
    kernel, ports, policy = setup()

    async def run() -> None:
        await ports.reconcile({3: LinkInfo("eth0"), 4: LinkInfo("eth1")})
        policy.tick(0.0, ports.backoff_readings())
        kernel.count(3, 200_000)  # 100,000 samples/s at 1-in-2
        kernel.count(4, 200)
        kernel.now = 1.0
        (change,) = policy.tick(1.5, ports.backoff_readings())  # the tick comes later than the reading
        assert change.key == (3, "ingress") and change.old == 2
        index = kernel.filters[3, "ingress"].index
        assert ports.change_rate(change.key, change.new) is None
        after = kernel.filters[3, "ingress"]
        assert after.index == index and after.packets == 200_000 and after.rate == change.new  # same action
        assert kernel.calls.count("install") == 2  # no reinstall
        rows = {row["port"]: row for row in ports.status_rows()}
        assert rows["eth0"]["rate"] == 2 and rows["eth0"]["rate_in_force"] == change.new
        assert rows["eth0"]["current_rate"] == change.new and "over the budget of 1000" in rows["eth0"]["rate_reason"]
        assert rows["eth1"]["rate_in_force"] == 2 and rows["eth1"]["rate_reason"] is None
        # the filter deleted by another program: a heal reinstalls it at the rate in force, not the configured one
        del kernel.filters[3, "ingress"]
        outcome = await ports.heal(3)
        assert outcome.healed == ("ingress",) and kernel.filters[3, "ingress"].rate == change.new
        # the new filter counts from 0: the reading is its own counter, which the decision takes as a new start
        kernel.count(3, 1000)
        readings = {r.key: r for r in ports.backoff_readings()}
        assert readings[3, "ingress"].packets == 1000
        assert policy.tick(2.5, list(readings.values())) == [] and policy.rate((3, "ingress"), 2) == change.new

    asyncio.run(run())


def test_a_filter_sampled_in_hardware_is_reinstalled_at_the_new_rate_not_changed_in_place(caplog):
    # the driver took the rate when it offloaded the filter; a change of the action alone would leave the hardware
    # sampling at the old rate while status showed the new one
    kernel, ports, _policy = setup()
    kernel.in_hw = True

    async def run() -> None:
        await ports.reconcile({3: LinkInfo("eth0")})
        before = kernel.filters[3, "ingress"]
        failure = ports.change_rate((3, "ingress"), 50)
        assert failure is not None and "samples in hardware" in failure
        assert "change_rate" not in kernel.calls and kernel.filters[3, "ingress"] == before
        (row,) = ports.status_rows()
        assert row["current_rate"] == 2  # the kernel's rate, until the new filter: the truth meanwhile
        with caplog.at_level("INFO", logger="hwsflow"):
            outcome = await ports.heal(3)
        after = kernel.filters[3, "ingress"]
        assert outcome.healed == ("ingress",) and after.rate == 50 and after.index != before.index
        assert ports.ports[3].heals == {} and ports.ports[3].rate_reinstalls == set()  # not another program's doing
        assert "reinstalled at 1-in-50, as back-off asked" in caplog.text and "deleted by another" not in caplog.text
        (row,) = ports.status_rows()
        assert row["current_rate"] == 50
        # back-off going back before the heal was due: the heal finds the filter right, and nothing stays pending
        installs = kernel.calls.count("install")
        assert ports.change_rate((3, "ingress"), 80) is not None and ports.change_rate((3, "ingress"), 50) is not None
        assert await ports.heal(3) == HealOutcome() and kernel.calls.count("install") == installs
        assert ports.ports[3].rate_reinstalls == set()

    asyncio.run(run())


def test_a_counter_dump_that_cannot_be_parsed_is_a_warning_not_a_silent_debug_line(caplog):
    kernel, ports, _policy = setup()

    def broken() -> tuple[dict[int, ActionCounter], float]:
        raise MalformedMessage("attribute 1 has length 3 at offset 20")

    async def run() -> None:
        await ports.reconcile({3: LinkInfo("eth0")})
        kernel.counters = broken  # type: ignore[method-assign]
        with caplog.at_level("INFO", logger="hwsflow"):
            readings = ports.backoff_readings() + ports.backoff_readings()
        assert [r.packets for r in readings] == [None, None]  # no measurement, no guess
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "back-off measures nothing" in warnings[0].getMessage()  # once, not a tick

    asyncio.run(run())


def test_a_change_that_finds_the_filter_gone_says_so_and_the_spec_keeps_the_new_rate():
    kernel, ports, _policy = setup()

    async def run() -> None:
        await ports.reconcile({3: LinkInfo("eth0")})
        del kernel.filters[3, "ingress"]
        failure = ports.change_rate((3, "ingress"), 50)
        assert failure is not None and "gone" in failure
        assert [spec.rate for spec in ports.ports[3].specs] == [50]
        assert "ingress" not in ports.ports[3].states  # status does not show it sampled meanwhile

    asyncio.run(run())


@dataclasses.dataclass
class Race:
    """What happened around the change: the rates the kernel was asked to install at, change_rate's answer."""

    installed: list[int] = dataclasses.field(default_factory=list)
    changes: list[str | None] = dataclasses.field(default_factory=list)


def changing_rate_during(kernel: Kernel, ports: PortManager, call: object, rate: int, *, answered: bool) -> Race:
    """Back-off changes the port's rate to `rate` (as _back_off does, between two turns of the event loop) while
    the first `call` is with the fake worker: before the kernel answers it, or (answered) after, the answer still
    on its way."""
    answer = kernel.call
    race = Race()
    pending = [call]

    def change(fn: object) -> None:
        if fn in pending:
            pending.remove(fn)
            race.changes.append(ports.change_rate((3, "ingress"), rate))

    async def late(fn, *args):
        if fn is tc.install:
            race.installed.append(args[0].rate)
        if not answered:
            change(fn)
        result = await answer(fn, *args)
        if answered:
            change(fn)
        return result

    kernel.call = late  # type: ignore[method-assign]  # the worker, answering around the change
    return race


def test_a_pool_reading_that_queued_across_a_rate_change_does_not_bring_the_old_rate_back():
    """sync_pool reads through the worker, which may answer after back-off changed the rate in place: status
    then still shows the kernel's new rate, not the old one the late reading carried."""
    kernel, ports, _policy = setup()

    async def run() -> None:
        await ports.reconcile({3: LinkInfo("eth0")})
        race = changing_rate_during(kernel, ports, tc.read_filter, 47, answered=True)
        await ports.sync_pool(3)
        assert race.changes == [None]  # changed in place while the reading was on its way
        (row,) = ports.status_rows()
        assert kernel.filters[3, "ingress"].rate == row["current_rate"] == 47

    asyncio.run(run())


@pytest.mark.parametrize("answered", [False, True], ids=["before the reading", "after the reading"])
def test_a_heal_whose_reading_queued_across_a_rate_change_keeps_the_new_rate(answered: bool):
    """heal reads the filter through the worker; back-off changing the rate in place meanwhile is not a filter
    that differs: nothing is reinstalled, and the kernel, the states and status keep the new rate."""
    kernel, ports, _policy = setup()

    async def run() -> None:
        await ports.reconcile({3: LinkInfo("eth0")})
        index = kernel.filters[3, "ingress"].index
        race = changing_rate_during(kernel, ports, tc.read_filter, 47, answered=answered)
        outcome = await ports.heal(3)
        assert race.changes == [None] and outcome == HealOutcome() and race.installed == []
        assert kernel.filters[3, "ingress"].rate == 47 and kernel.filters[3, "ingress"].index == index
        assert ports.ports[3].states["ingress"].rate == 47 and [s.rate for s in ports.ports[3].specs] == [47]
        (row,) = ports.status_rows()
        assert row["current_rate"] == 47

    asyncio.run(run())


@pytest.mark.parametrize(("during", "installed_at"), [(tc.ensure_qdisc, [47]), (tc.install, [2])],
                         ids=["while the qdisc is ensured", "while the filter is installed"])
def test_a_rate_change_during_a_heal_leaves_the_filter_at_the_new_rate(during: object, installed_at: list[int]):
    """A change that lands before the install goes out is the rate installed; one that lands while the install
    is on its way at the old rate (back-off's change then finds the old filter gone) is made in place on the new
    filter afterwards: the same action, so its counter goes on."""
    kernel, ports, _policy = setup()

    async def run() -> None:
        await ports.reconcile({3: LinkInfo("eth0")})
        del kernel.filters[3, "ingress"]
        race = changing_rate_during(kernel, ports, during, 47, answered=True)
        outcome = await ports.heal(3)
        (failure,) = race.changes  # the old filter was gone: the agent heals again, which then finds it right
        assert failure is not None and "gone" in failure
        assert outcome.healed == ("ingress",) and race.installed == installed_at  # never again at the old rate
        healed = kernel.filters[3, "ingress"]
        assert healed.rate == ports.ports[3].states["ingress"].rate == 47
        assert healed.index == ports.ports[3].states["ingress"].index == kernel.next_index - 1  # one new action
        assert ports.ports[3].error is None
        (row,) = ports.status_rows()
        assert row["current_rate"] == 47

    asyncio.run(run())


def test_a_rate_change_while_a_heal_installs_a_filter_in_hardware_installs_it_again_at_the_new_rate():
    """In hardware the change cannot be made in place on the new filter: it is installed once more, at the new
    rate; the heal itself was for a filter another program deleted, and counts as one."""
    kernel, ports, _policy = setup()
    kernel.in_hw = True

    async def run() -> None:
        await ports.reconcile({3: LinkInfo("eth0")})
        del kernel.filters[3, "ingress"]
        race = changing_rate_during(kernel, ports, tc.install, 47, answered=True)
        outcome = await ports.heal(3)
        (failure,) = race.changes
        assert failure is not None and "samples in hardware" in failure
        assert outcome.healed == ("ingress",) and race.installed == [2, 47] and "change_rate" not in kernel.calls
        assert kernel.filters[3, "ingress"].rate == ports.ports[3].states["ingress"].rate == 47
        assert ports.ports[3].heals == {"filter_missing": 1} and ports.ports[3].rate_reinstalls == set()

    asyncio.run(run())


def test_status_render_marks_a_backed_off_rate_and_gives_the_reason():
    row = {"port": "eth0", "ifindex": 3, "groups": [1000], "rate": 2, "rate_in_force": 134, "direction": "ingress",
           "offload": "not_in_hw", "samples_per_s": 740.0, "drops": 0, "pool": 5, "last_sample_age_s": 0.2,
           "runtime": False, "rate_reason": "100000 samples/s from all ports, over the budget of 1000"}
    status = {"agent": {"version": "x", "pid": 1, "uptime_s": 5, "address": "a", "config": "c", "psample": "joined",
                        "enobufs": 0, "kernel_drops": 0, "foreign": 0, "malformed": 0},
              "ports": [row, dict(row, port="eth1", rate_in_force=2, rate_reason=None)], "collectors": []}
    text = render(status)
    assert "1-in-134*" in text
    assert "eth0: *backed off to 1-in-134 from 1-in-2: 100000 samples/s from all ports" in text
    assert "eth1: *backed off" not in text
