"""A real Prometheus server scrapes hwsflow in the VM, and its answers match `hwsflow status --json`.

The guest side is tests/vm/scenarios_metrics.py: it defines the moment both are
read (traffic stopped and exported, status read, a scrape after that read,
queries, status read again).
"""

from __future__ import annotations

import errno

import pytest

from hwsflow.core.metrics import error_code
from tests.vm.scenarios_metrics import FAILED, FRAMES, PORT, REFUSED, TAGS


@pytest.fixture(scope="module")
def res(vm) -> dict:
    assert "metrics" in vm, vm["errors"]
    return vm["metrics"]


def answer(res: dict, query: str, **labels: str) -> float:
    """The one value Prometheus answered for query among the series carrying labels."""
    found = [float(r["value"][1]) for r in res["queries"][query]
             if all(r["metric"].get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (query, labels, res["queries"][query])
    return found[0]


def row(status: dict, port: str) -> dict:
    return next(r for r in status["ports"] if r["port"] == port)


def test_the_scenario_ran(vm, res):
    assert not [e for e in vm["errors"] if "metrics" in e], vm["errors"]
    assert res["exit"] == 0, res["log"]
    assert "Traceback" not in res["log"]
    assert res["prometheus_exit"] == 0, res["prometheus_log"]


def test_prometheus_scraped_the_agent(res):
    assert res["target"]["health"] == "up", res["target"]
    assert res["target"]["lastError"] == ""
    assert answer(res, 'up{job="hwsflow"}') == 1


def test_the_figures_stood_still_around_the_scrape(res):
    """Both status reads agree on every figure compared: the queries answer for that same moment."""
    before, after = res["status_before"], res["status_after"]
    for key in ("samples", "foreign", "malformed", "kernel_drops", "internal_errors", "reloads"):
        assert before["agent"][key] == after["agent"][key], key
    for port in (PORT, FAILED):
        for key in ("samples", "drops", "pool_total", "rate", "current_rate", "offload", "error_code", "heals"):
            assert row(before, port)[key] == row(after, port)[key], (port, key)
    assert before["collectors"] == after["collectors"]


def test_a_port_s_figures_in_prometheus_match_status(res):
    status = res["status_before"]
    port = row(status, PORT)
    labels = {"port": PORT, "ifindex": str(port["ifindex"]), "direction": port["direction"]}
    assert answer(res, "hwsflow_port_samples_total", **labels) == port["samples"]
    assert answer(res, "hwsflow_port_dropped_samples_total", **labels) == port["drops"]
    assert answer(res, "hwsflow_port_sample_pool_packets_total", **labels) == port["pool_total"]
    assert answer(res, "hwsflow_port_sampling_rate", **labels) == port["rate"]
    assert answer(res, "hwsflow_port_current_sampling_rate", **labels) == port["current_rate"]
    assert answer(res, "hwsflow_port_offload == 1", **labels, state=port["offload"]) == 1
    assert answer(res, "hwsflow_port_sampled", **labels) == 1
    for cause, count in port["heals"].items():
        assert answer(res, "hwsflow_port_heals_total", **labels, cause=cause) == count
    # and the figures are the scenario's: every frame of both rounds sampled 1-in-1 after the reload,
    # one heal of the filter another program deleted
    assert port["samples"] == len(TAGS) * FRAMES and port["drops"] == 0
    assert port["rate"] == port["current_rate"] == 1
    assert port["heals"] == {"filter_missing": 1}


def test_a_failed_port_says_so_and_why(res):
    status = res["status_before"]
    port = row(status, FAILED)
    labels = {"port": FAILED, "ifindex": str(port["ifindex"]), "direction": "egress"}
    assert port["offload"] == "failed" and port["error_code"] == "tc_state"
    assert answer(res, "hwsflow_port_failed", **labels, reason="tc_state") == 1
    assert answer(res, "hwsflow_port_sampled", **labels) == 0
    assert answer(res, "hwsflow_port_offload == 1", **labels, state="failed") == 1
    assert not [r for r in res["queries"]["hwsflow_port_current_sampling_rate"] if r["metric"]["port"] == FAILED]


def test_agent_figures_in_prometheus_match_status(res):
    agent = res["status_before"]["agent"]
    assert answer(res, "hwsflow_psample_samples_total") == agent["samples"] >= len(TAGS) * FRAMES
    assert answer(res, "hwsflow_psample_kernel_drops_total") == agent["kernel_drops"]
    assert answer(res, "hwsflow_psample_foreign_samples_total") == agent["foreign"]
    assert answer(res, "hwsflow_psample_malformed_messages_total") == agent["malformed"]
    assert answer(res, "hwsflow_internal_errors_total") == agent["internal_errors"] == 0
    assert answer(res, "hwsflow_reloads_total", outcome="applied") == agent["reloads"]["applied"] == 1
    assert answer(res, "hwsflow_reloads_total", outcome="rejected") == agent["reloads"]["rejected"] == 0
    assert answer(res, "hwsflow_build_info", version=agent["version"], path="python") == 1


def test_collector_figures_in_prometheus_match_status(res):
    collectors = res["status_before"]["collectors"]
    assert len(collectors) == 3
    for collector in collectors:
        labels = {"collector": collector["target"]}
        assert answer(res, "hwsflow_collector_datagrams_sent_total", **labels) == collector["sent"]
        assert answer(res, "hwsflow_collector_send_errors_total", **labels) == collector["errors"]
        assert answer(res, "hwsflow_collector_last_error", **labels) == error_code(collector["last_error"])
    refused = next(c for c in collectors if c["target"] == REFUSED)
    assert refused["errors"] > 0 and refused["last_error"] == "ECONNREFUSED"
    assert answer(res, "hwsflow_collector_last_error", collector=REFUSED) == errno.ECONNREFUSED


def test_promtool_check_metrics_passes_on_the_running_agent(res):
    assert res["promtool"]["exit"] == 0, res["promtool"]["output"]
    assert "hwsflow_port_samples_total{" in res["exposition"]


def test_the_alert_rules_load_and_see_the_failures(res):
    """The repository's rules in the real server: the failed port and the refused collector are pending
    (their `for:` has not passed), the healthy port raises nothing."""
    assert [g["name"] for g in res["rules"]] == ["hwsflow"]
    assert all(rule["health"] == "ok" for g in res["rules"] for rule in g["rules"]), res["rules"]
    alerts = {(a["metric"]["alertname"], a["metric"].get("port") or a["metric"].get("collector"))
              for a in res["queries"]["ALERTS"]}
    assert ("HwsflowPortFailed", FAILED) in alerts
    assert ("HwsflowCollectorFailing", REFUSED) in alerts
    assert not [a for a in alerts if a[1] == PORT]
