"""Port plans: config rules and runtime changes over links; only changed ports are touched."""

from __future__ import annotations

from hwsflow.core.config import parse_config
from hwsflow.core.model import LinkInfo
from hwsflow.core.control import Enable
from hwsflow.core.groups import GroupTable
from hwsflow.core.selection import PortPlan, changes, enabled_settings, plan_all

CONFIG = """
targets: ["192.0.2.10:6343"]
sampling: 100
ports:
  - name: up0
    direction: both
    priority: 7
  - switch_id: 00154d1234
    port_name: "pf0vf*"
    sampling: 1000
  - name: hw0
    group: 77
"""
LINKS = {
    1: LinkInfo("up0", "00154d1234", "p0"),
    2: LinkInfo("vf0rep", "00154d1234", "pf0vf0"),
    3: LinkInfo("vf9rep", "00154d9999", "pf0vf0"),  # another switch
    4: LinkInfo("hw0"),
    5: LinkInfo("eth9"),
}


def test_plans_follow_names_switchdev_selectors_and_receive_only_groups():
    config = parse_config(CONFIG)
    plans = plan_all(config, LINKS, {})
    assert sorted(plans) == [1, 2, 4]
    assert plans[1].settings.direction == "both" and plans[1].settings.sampling == 100
    assert plans[2].settings.sampling == 1000 and plans[2].receive_group is None
    assert plans[4].receive_group == 77 and plans[4].directions == ["ingress"]


def test_runtime_changes_override_the_config_until_cleared():
    config = parse_config(CONFIG)
    enabled = enabled_settings(config, LINKS[1], Enable("up0", 10, header=64))
    assert (enabled.sampling, enabled.header, enabled.direction, enabled.priority) == (10, 64, "both", 7)
    fresh = enabled_settings(config, LINKS[5], Enable("eth9", 5, "egress"))
    assert (fresh.sampling, fresh.direction, fresh.priority) == (5, "egress", 1)  # the defaults below it
    plans = plan_all(config, LINKS, {"eth9": fresh, "vf0rep": None})
    assert plans[5] == PortPlan(5, "eth9", fresh, runtime=True)
    assert 2 not in plans  # disabled at runtime


def test_only_changed_ports_are_touched():
    config = parse_config(CONFIG)
    before = plan_all(config, LINKS, {})
    after = plan_all(parse_config(CONFIG.replace("sampling: 1000", "sampling: 500")), LINKS, {})
    assert changes(before, after).apply == (2,) and changes(before, after).remove == ()
    gone = {k: v for k, v in LINKS.items() if k != 1}
    assert changes(before, plan_all(config, gone, {})).remove == (1,)
    assert changes(before, before).apply == ()


def test_group_table_keeps_a_wanted_group_and_the_data_source_across_rebinds():
    table = GroupTable(1000)
    first = table.bind(5, "p", "ingress", 10, 128, wanted=4242)  # adopted from an earlier run
    assert first.group == 4242
    first.source.flow_seq = 9
    again = table.bind(5, "p", "ingress", 20, 64)
    assert again.group == 4242 and again.source is first.source and again.rate == 20
    assert table.bind(6, "q", "ingress", 10, 128, wanted=4242).group == 1000  # taken: allocated instead
    table.release(5, "ingress")
    assert 4242 not in table.by_group and 5 not in table.sources
