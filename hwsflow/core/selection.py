"""Which ports to sample and how: the config's rules and the CLI's runtime changes over the host's links.

Pure: the agent hands in the links it read from rtnetlink and acts on the
difference between the plans it gets back and what it has installed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Mapping

from hwsflow.core.config import Config, PortSettings
from hwsflow.core.model import Direction, LinkInfo, directions_of
from hwsflow.core.control import Enable
from hwsflow.core.sampling import RateChoice, choose_rate

# by interface name: settings `hwsflow enable` gave, or None for `hwsflow disable`
Overrides = Mapping[str, "PortSettings | None"]


@dataclass(frozen=True)
class PortPlan:
    """What one port should have."""

    ifindex: int
    ifname: str
    settings: PortSettings
    receive_group: int | None = None  # receive-only: map this group to the port, install nothing
    runtime: bool = False  # set by `hwsflow enable`, not by the config file
    rate_from: str = "config"  # why settings.sampling is what it is (core.sampling.RateChoice.source)
    speed_bps: int = 0  # the link speed `sampling: auto` used

    @property
    def directions(self) -> list[Direction]:
        # a receive-only rule is one direction: the config refuses "both" for it
        return list(directions_of(self.settings.direction))


def enabled_settings(config: Config, link: LinkInfo, request: Enable) -> PortSettings:
    """A port's settings after `hwsflow enable`: the request's rate, direction and header over what the
    config would give the port (its rule's offload, priority and chain stay), or over the defaults."""
    rule = config.rule_for(link)
    base = rule.settings if rule is not None and rule.group is None else config.defaults
    return replace(
        base,
        sampling=request.rate,
        sampling_auto=False,
        direction=request.direction or base.direction,
        header=request.header or base.header,
    )


def plan_port(config: Config, ifindex: int, link: LinkInfo, overrides: Overrides) -> PortPlan | None:
    if link.ifname in overrides:
        settings = overrides[link.ifname]
        return None if settings is None else PortPlan(ifindex, link.ifname, settings, runtime=True)
    rule = config.rule_for(link)
    if rule is None:
        return None
    settings = rule.settings
    choice = choose_rate(settings.sampling, settings.sampling_auto, link.speed_bps)
    return PortPlan(ifindex, link.ifname, replace(settings, sampling=choice.rate), receive_group=rule.group,
                    rate_from=choice.source, speed_bps=choice.speed_bps)


def rate_choice(plan: PortPlan) -> RateChoice:
    """What status says about the plan's rate."""
    return RateChoice(plan.settings.sampling, plan.rate_from, plan.speed_bps)


def plan_all(config: Config, links: Mapping[int, LinkInfo], overrides: Overrides) -> dict[int, PortPlan]:
    plans = {}
    for ifindex, link in links.items():
        plan = plan_port(config, ifindex, link, overrides)
        if plan is not None:
            plans[ifindex] = plan
    return plans


@dataclass(frozen=True)
class Changes:
    remove: tuple[int, ...]  # ifindexes to stop sampling
    apply: tuple[int, ...]  # ifindexes to (re)configure: new, or with other settings


def changes(current: Mapping[int, PortPlan], wanted: Mapping[int, PortPlan]) -> Changes:
    """Only ports whose plan differs are touched: the others keep sampling without a gap."""
    remove = tuple(sorted(i for i in current if i not in wanted))
    apply = tuple(sorted(i for i, plan in wanted.items() if current.get(i) != plan))
    return Changes(remove, apply)
