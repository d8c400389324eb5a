"""PortManager with a fake rtnetlink: an install that loses a race stays wanted and is healed later."""

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
        assert list(retries) == [3] and "vanished right after it was added" in retries[3]
        assert ports.take_retries() == {}
        port = ports.ports[3]
        assert [s.direction for s in port.specs] == ["ingress"] and port.error is None  # still wanted
        assert not ports.has_own_filters() and ports.groups.by_group  # its group stays bound meanwhile
        outcome = await ports.heal(3)
        assert outcome.healed == ("ingress",) and outcome.failure is None and not outcome.waiting
        assert ports.has_own_filters()

    asyncio.run(run())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
