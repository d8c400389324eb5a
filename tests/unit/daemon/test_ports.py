"""PortManager with a fake rtnetlink: an install that loses a race, or finds its priority taken by another
program, stays wanted and is healed later; status tells the truth meanwhile."""

from __future__ import annotations

import asyncio
import logging

from hwsflow.core.config import parse_config
from hwsflow.core.groups import GroupTable
from hwsflow.core.model import LinkInfo
from hwsflow.daemon.logs import RateLimiter
from hwsflow.daemon.ports import PortManager
from hwsflow.linux import tc


class FakeRtnl:
    """Answers PortManager's rtnetlink calls: the first install's filter vanishes, later ones stay."""

    def __init__(self) -> None:
        self.installs = 0

    async def call(self, fn, *args):
        if fn is tc.install:
            spec = args[0]
            self.installs += 1
            if self.installs == 1:
                raise tc.FilterVanished(f"port {spec.ifname}: the {spec.direction} sample filter vanished right "
                                        "after it was added")
            return self.state(spec), False
        if fn is tc.read_filter:
            return None  # nothing there yet: heal installs it
        return {tc.own_groups: [], tc.ensure_qdisc: False, tc.holds_only_own: False}[fn]

    @staticmethod
    def state(spec: tc.FilterSpec) -> tc.FilterState:
        return tc.FilterState(ifindex=spec.ifindex, direction=spec.direction, priority=spec.priority,
                              chain=spec.chain, handle=1, protocol=tc.ETH_P_ALL, rate=spec.rate, group=spec.group,
                              trunc=spec.trunc, verdict=0, cookie=spec.cookie, in_hw=False, packets=0)


def test_a_filter_lost_to_a_race_stays_wanted_and_is_healed(caplog):
    config = parse_config("targets: [192.0.2.10]\nports:\n  - name: eth0\n")
    rtnl = FakeRtnl()
    ports = PortManager(config, rtnl, GroupTable(config.group_base), RateLimiter())  # type: ignore[arg-type]  # a fake rtnetlink worker
    caplog.set_level(logging.INFO, logger="hwsflow")

    async def run():
        await ports.reconcile({3: LinkInfo("eth0")})
        retries = ports.take_retries()
        assert list(retries) == [3] and "vanished right after it was added" in (retries[3].failure or "")
        assert not retries[3].blocked
        assert ports.take_retries() == {}
        port = ports.ports[3]
        assert [s.direction for s in port.specs] == ["ingress"] and port.error is None  # still wanted
        assert not ports.has_own_filters() and ports.groups.by_group  # its group stays bound meanwhile
        outcome = await ports.heal(3)
        assert outcome.healed == ("ingress",) and outcome.failure is None and not outcome.waiting
        assert ports.has_own_filters()

    asyncio.run(run())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


POLICED = ("port eth0: ingress priority 1 is held by another program's matchall filter with a police action; "
           "hwsflow leaves it alone")


class PolicedRtnl(FakeRtnl):
    """Another program's policer holds priority 1 while `policed`; the port's qdisc is gone while `no_qdisc`."""

    def __init__(self) -> None:
        super().__init__()
        self.policed = True
        self.no_qdisc = False
        self.qdisc_kind = "ingress"
        self.installed: dict[str, tc.FilterState] = {}

    async def call(self, fn, *args):
        if fn is tc.install:
            spec = args[0]
            if self.policed:
                raise tc.PriorityTaken(POLICED)
            self.installed[spec.direction] = self.state(spec)
            return self.installed[spec.direction], False
        if fn is tc.read_filter:
            return self.installed.get(args[0].direction)
        if fn is tc.ensure_qdisc:
            created, self.no_qdisc = self.no_qdisc, False
            return created
        if fn is tc.find_clsact_kind:
            return self.qdisc_kind
        return {tc.own_groups: [], tc.holds_only_own: False}[fn]


def _manager(rtnl: FakeRtnl) -> PortManager:
    config = parse_config("targets: [192.0.2.10]\nports:\n  - name: eth0\n")
    return PortManager(config, rtnl, GroupTable(config.group_base), RateLimiter())  # type: ignore[arg-type]


def test_a_priority_held_by_another_program_shows_failed_with_the_reason_and_heals_once_free(caplog):
    rtnl = PolicedRtnl()
    ports = _manager(rtnl)
    caplog.set_level(logging.INFO, logger="hwsflow")

    async def run():
        await ports.reconcile({3: LinkInfo("eth0")})
        retries = ports.take_retries()
        assert retries[3].blocked and retries[3].failure == POLICED
        (row,) = ports.status_rows()
        assert row["offload"] == "failed" and row["error"] == POLICED and row["error_code"] == "priority_taken"
        assert ports.ports[3].specs and ports.groups.by_group  # still wanted, its group kept
        outcome = await ports.heal(3)  # the policer is still there
        assert outcome.blocked and outcome.failure == POLICED and outcome.healed == ()
        assert ports.status_rows()[0]["offload"] == "failed"
        rtnl.policed = False  # the operator removed it
        outcome = await ports.heal(3)
        assert outcome.healed == ("ingress",) and outcome.failure is None
        (row,) = ports.status_rows()
        assert row["offload"] == "not_in_hw" and row["error"] is None and row["error_code"] is None

    asyncio.run(run())
    # what is worth saying is the heal schedule's to say, once (tests/test_heal.py): nothing here
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_sampled_port_whose_filter_is_replaced_by_a_policer_is_no_longer_shown_sampled():
    rtnl = PolicedRtnl()
    rtnl.policed = False
    ports = _manager(rtnl)

    async def run():
        await ports.reconcile({3: LinkInfo("eth0")})
        assert ports.status_rows()[0]["offload"] == "not_in_hw"
        rtnl.installed.clear()  # Open vSwitch deleted hwsflow's matchall at priority 1...
        rtnl.policed = True  # ...and put its policer there
        outcome = await ports.heal(3)
        assert outcome.blocked
        (row,) = ports.status_rows()
        assert row["offload"] == "failed" and row["current_rate"] is None and "police" in row["error"]

    asyncio.run(run())


def test_a_clsact_qdisc_a_heal_creates_is_hwsflows_until_another_programs_qdisc_replaces_it():
    rtnl = PolicedRtnl()
    rtnl.policed = False
    ports = _manager(rtnl)

    async def run():
        await ports.reconcile({3: LinkInfo("eth0")})
        assert not ports.ports[3].created_qdisc  # the port had its qdisc
        rtnl.installed.clear()
        rtnl.no_qdisc = True  # its owner deleted it and did not come back: hwsflow makes a clsact
        rtnl.qdisc_kind = "clsact"
        assert (await ports.heal(3)).healed == ("ingress",)
        assert ports.ports[3].created_qdisc
        rtnl.installed.clear()  # its filter deleted alone: the clsact is still hwsflow's
        assert (await ports.heal(3)).healed == ("ingress",) and ports.ports[3].created_qdisc
        rtnl.installed.clear()
        rtnl.qdisc_kind = "ingress"  # Open vSwitch replaced it with its own
        assert (await ports.heal(3)).healed == ("ingress",)
        assert not ports.ports[3].created_qdisc  # not hwsflow's to remove, and its owner is waited for

    asyncio.run(run())
