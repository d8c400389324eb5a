"""Back-off on a real kernel (tests/vm/scenarios_backoff.py): under a flood the rate backs off in place, the
numbers stay true across the change, and the rate comes back once the flood is over.

The kernel's own counts are the reference: the tc sample action's packet
counter, rate and index, and /proc/net/netlink's drop count of the agent's
psample socket.
"""

from __future__ import annotations

import math
import re
from itertools import pairwise

import pytest

from tests.vm import frames
from tests.vm import scenarios_backoff as sb
from tests.vm.test_vm_accounting import Sample
from tests.vm.test_vm_accounting import flow_samples as accounting_flow_samples

# s from the flood's first packets (as tc counts them, polled every sb.POLL s) to the kernel reporting the new
# rate.  The agent decides at the second tick that sees the flood (the first takes a baseline), so on a host it
# is 2 to 3 s.  Under software emulation the agent drains the flood's samples flat out, each turn of its event
# loop takes a fraction of a second, and its ticks come seconds late: measured 2.5 s on a moderately loaded
# host, 12.6 s at load 7 with wait_for's ticks; hence the margin.
BACKOFF_BOUND_S = 20.0
# s from the flood's end to the configured rate back: the hold, plus the ticks that see the load fall and the
# samples still queued under emulation
RESTORE_BOUND_S = sb.HOLD + 20.0


def flow_samples(hexes: list[str]) -> list[Sample]:
    return accounting_flow_samples(hexes, frames.identify)


@pytest.fixture(scope="session")
def backoff(vm) -> dict:
    assert "backoff" in vm, f"the back-off scenario recorded nothing; guest errors: {vm['errors']}"
    return vm["backoff"]


@pytest.fixture(scope="session")
def samples(backoff) -> dict[str, list[Sample]]:
    parsed = flow_samples(backoff["datagrams"])
    return {port: sorted((s for s in parsed if s.source == backoff["ifindex"][port]), key=lambda s: s.seq)
            for port in (sb.FLOOD_PORT, sb.HEALTHY_PORT)}


def test_backoff_scenario_ran(vm, backoff):
    assert [e for e in vm["errors"] if e.startswith("scenario_backoff")] == []
    assert backoff["exit"] == 0
    assert "Traceback" not in backoff["log"]


def test_the_flood_was_far_over_the_budget(backoff):
    offered = backoff["flood_sent"] / sb.FLOOD_S
    assert offered > 10 * sb.BUDGET, offered


def test_the_rate_backs_off_in_place_within_the_bound(backoff):
    before, after = backoff["before"], backoff["backed_off"]
    assert before["rate"] == 1 and after["rate"] > 1
    assert after["index"] == before["index"]  # the same action: changed, not reinstalled
    assert after["packets"] >= backoff["flood_seen"]["packets"] > before["packets"]  # its counter went on
    took = after["at"] - backoff["flood_seen"]["at"]
    assert took <= BACKOFF_BOUND_S, took
    assert backoff["final"]["index"] == before["index"]


def test_status_shows_the_rate_in_force_and_why(backoff):
    rows = {row["port"]: row for row in backoff["status_backed_off"]["ports"]}
    flood, healthy = rows[sb.FLOOD_PORT], rows[sb.HEALTHY_PORT]
    assert flood["rate"] == 1 and flood["rate_in_force"] > 1 and flood["current_rate"] == flood["rate_in_force"]
    assert f"over the budget of {sb.BUDGET}" in flood["rate_reason"]
    assert healthy["rate_in_force"] == healthy["rate"] == 1 and healthy["rate_reason"] is None
    final = {row["port"]: row for row in backoff["status_final"]["ports"]}
    assert final[sb.FLOOD_PORT]["rate_in_force"] == 1 and final[sb.FLOOD_PORT]["rate_reason"] is None


def test_each_change_is_logged_once_with_both_rates_and_the_rates_never_oscillate(backoff):
    lines = re.findall(rf"port {sb.FLOOD_PORT} ingress: sampling 1-in-(\d+) -> 1-in-(\d+): (.+)", backoff["log"])
    assert lines, backoff["log"][-2000:]
    rates = [1] + [int(new) for _old, new, _why in lines]
    assert all(int(old) == prev for (old, _new, _why), prev in zip(lines, rates))
    peak = rates.index(max(rates))
    assert rates[:peak + 1] == sorted(rates[:peak + 1])  # up while the flood was measured
    assert rates[peak:] == sorted(rates[peak:], reverse=True) and rates[-1] == 1  # then back, once calm
    assert "under half the budget" in lines[-1][2]
    assert not re.search(rf"port {sb.HEALTHY_PORT} \w+: sampling", backoff["log"])
    assert not re.search(r"^(WARNING|ERROR)", backoff["log"], re.MULTILINE)


def test_kernel_drops_stop_growing_after_the_back_off(backoff, samples):
    assert backoff["drops_final"] == backoff["drops_at_backoff"]
    flood = samples[sb.FLOOD_PORT]
    after = [s.drops for s in flood if s.rate > 1 or s.tag == sb.TAG_LATE]
    assert after and len(set(after)) == 1  # the drops every sample carries stopped at the change
    assert flood[-1].drops == after[0]


def test_the_estimate_stays_within_sflows_bound_across_the_change(backoff, samples):
    """sum(sampling_rate) over every sample of the run, at 1-in-1, at the backed-off rate and at 1-in-1 again,
    against tc's counter.  sFlow's 95% bound for samples of one rate, 196 x sqrt(1/samples) percent, is
    1.96 sqrt(sum N^2) / sum N for samples of several rates (the variance each sample adds is about N^2,
    the rate-1 ones none in truth): it reduces to the one-rate formula when every N is the same."""
    flood = samples[sb.FLOOD_PORT]
    assert {s.rate for s in flood} >= {1, backoff["backed_off"]["rate"]}
    assert [s.seq for s in flood] == list(range(1, len(flood) + 1))  # no flow sample missing at the collector
    estimated = sum(s.rate for s in flood)
    counted = backoff["final"]["packets"]
    error = abs(estimated - counted) / counted * 100
    bound = 196 * math.sqrt(sum(s.rate ** 2 for s in flood)) / estimated
    assert error <= bound, (estimated, counted, error, bound)
    # lost samples stand for packets too: with them (each at its rate, here none were lost) it is the same figure
    assert flood[-1].drops == 0 or error <= bound


def test_the_pool_never_goes_back_and_converges_on_tcs_count(backoff, samples):
    flood = samples[sb.FLOOD_PORT]
    assert all(x.pool <= y.pool for x, y in pairwise(flood))
    # above 1-in-1 even a pool filling what it was ahead by advances (see DataSource.advance)
    assert all(x.pool < y.pool for x, y in pairwise(flood) if y.rate > 1)
    late = [s for s in flood if s.tag == sb.TAG_LATE]
    assert len(late) == sb.LATE and all(s.rate == 1 for s in late)
    # after the re-syncs the pool is the kernel's count or, where the estimate ran ahead, holds there until the
    # kernel's count passes it; the late samples at 1-in-1 then add exactly their packets
    tc_final = backoff["final"]["packets"]
    assert tc_final == backoff["tc_before_late"]["packets"] + sb.LATE
    first = late[0].pool
    assert flood[-1].pool in {max(tc_final, first), max(tc_final, first - 1)}


def test_the_rate_returns_to_the_configured_one_once_the_flood_stops(backoff):
    took = backoff["restored"]["at"] - backoff["flood_end"]["at"]
    assert backoff["restored"]["rate"] == 1 and backoff["restored"]["index"] == backoff["before"]["index"]
    assert took <= RESTORE_BOUND_S, took


def test_the_healthy_port_keeps_its_rate_and_loses_nothing(backoff, samples):
    healthy = samples[sb.HEALTHY_PORT]
    trickle = [s for s in healthy if s.tag == sb.TAG_TRICKLE]
    assert {s.index for s in trickle} == set(range(backoff["trickle_sent"]))
    assert all(s.rate == 1 and s.drops == 0 for s in healthy)
    assert backoff["healthy_final"]["rate"] == 1
