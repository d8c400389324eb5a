"""What a reload changes, decided without sockets: the plan, the datagram sequence, collector counts."""

from __future__ import annotations

from hwsflow.core.config import parse_config
from hwsflow.core.reload import (
    AgentIdentity, CollectorCounts, ReloadPlan, carried_counts, plan_reload, sequence_carries,
)

BASE = "targets: [192.0.2.10]\nports:\n  - name: eth0\n"


def test_an_unchanged_file_changes_nothing_global():
    old = parse_config(BASE, "a.yaml")
    plan = plan_reload(old, parse_config(BASE + "    sampling: 9\n", "a.yaml"))
    assert plan == ReloadPlan((), None, False, None)
    assert plan.summary("a.yaml") == "reloaded a.yaml"


def test_each_global_change_becomes_its_action():
    old = parse_config(BASE, "a.yaml")
    new = parse_config(BASE + "rcvbuf: 1048576\ngroup_base: 5000\ncontrol_socket: /run/x.sock\n", "a.yaml")
    plan = plan_reload(old, new)
    assert plan.changed == ("group_base", "rcvbuf", "control_socket")
    assert plan.rcvbuf == 1048576 and plan.regroup
    assert plan.control_socket_kept == "/run/hwsflow/control.sock"  # the one still in use until a restart
    assert plan.summary("a.yaml") == "reloaded a.yaml (changed: group_base, rcvbuf, control_socket)"


def test_the_datagram_sequence_goes_on_only_for_the_same_agent():
    same = AgentIdentity("192.0.2.1", 0)
    assert sequence_carries(same, AgentIdentity("192.0.2.1", 0))
    assert not sequence_carries(same, AgentIdentity("192.0.2.2", 0))
    assert not sequence_carries(same, AgentIdentity("192.0.2.1", 1))
    assert not sequence_carries(None, same)


def test_a_kept_collector_keeps_its_counts_and_its_last_error_only_when_it_can_send():
    old = CollectorCounts(sent=10, errors=2, last_error="ECONNREFUSED")
    assert carried_counts(old, "", resolved=True) == old
    waiting = carried_counts(old, "cannot resolve 'c.example'", resolved=False)
    assert waiting == CollectorCounts(10, 2, "cannot resolve 'c.example'")
    assert carried_counts(None, "", resolved=True) is None  # a new target starts from zero


def test_group_base_moves_only_with_no_group_bound():
    import pytest

    from hwsflow.core.groups import GroupTable

    groups = GroupTable(1000)
    groups.bind(3, "eth0", "ingress", 10, 128)
    with pytest.raises(ValueError, match="cannot move while 1 groups are bound"):
        groups.rebase(5000)
    groups.release(3, "ingress")
    groups.rebase(5000)
    assert groups.bind(3, "eth0", "ingress", 10, 128).group == 5000


def test_collector_set_carry_over_applies_the_rule_per_target():
    from hwsflow.linux.collectors import Collector, CollectorSet

    old = CollectorSet([Collector("a:1", "a", 1, sent=5, errors=1, last_error="ECONNREFUSED"),
                        Collector("gone:1", "gone", 1, sent=7)])
    new = CollectorSet([Collector("a:1", "a", 1, last_error="cannot resolve 'a'"), Collector("b:1", "b", 1)])
    new.carry_over(old)
    a, b = new.collectors
    assert (a.sent, a.errors, a.last_error) == (5, 1, "cannot resolve 'a'")  # waits: why says more
    assert (b.sent, b.errors, b.last_error) == (0, 0, "")
    old.close()
    new.close()


def test_a_metrics_change_moves_the_endpoint():
    old = parse_config(BASE, "a.yaml")
    plan = plan_reload(old, parse_config(BASE + "metrics: '127.0.0.1:9465'\n", "a.yaml"))
    assert plan.metrics and plan.changed == ("metrics",)
    assert not plan_reload(old, old).metrics
