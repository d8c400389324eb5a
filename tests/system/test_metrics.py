"""The Prometheus endpoint: the mapping from the status, the running endpoint, promtool, the alert rules
and the example Grafana dashboard.

The real Prometheus server scraping an agent that samples is in the VM test
(tests/vm/test_vm_metrics.py); here the agent runs on this host, where psample
is absent, so its figures stand still and the scrape can be compared with
`hwsflow status --json` exactly.
"""

from __future__ import annotations

import asyncio
import errno
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pyroute2.netlink.exceptions import NetlinkError

from hwsflow.core.control import Status
from hwsflow.core.metrics import ERROR_WITHOUT_ERRNO, OFFLOAD_STATES, error_code, families
from hwsflow.daemon.ports import failure_code, heal_cause
from hwsflow.linux import metrics_endpoint, tc
from hwsflow.linux.control_socket import NotRunning, request
from hwsflow.linux.metrics_endpoint import MetricsEndpoint
from tests.helpers.paths import REPO

PROMTOOL = REPO / ".cache/prometheus/usr/bin/promtool"
MONITORING = REPO / "monitoring"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exposition(status: dict) -> str:
    class Snapshot:
        def collect(self):
            return families(status)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())  # type: ignore[arg-type]  # a collector is anything with collect()
    return generate_latest(registry).decode()


def port_row(**changes) -> dict:
    row = {"port": "eth0", "ifindex": 4, "groups": [1000, 1001], "rate": 400, "direction": "both",
           "offload": "not_in_hw", "runtime": False, "error": None, "error_code": None,
           "heals": {"filter_missing": 2, "qdisc_missing": 1}, "current_rate": 400, "samples_per_s": 1.5,
           "samples": 1234, "drops": 7, "pool": (5 << 32) + 3 & 0xFFFFFFFF, "pool_total": (5 << 32) + 3,
           "last_sample_age_s": 0.5}
    return {**row, **changes}


STATUS = {
    "agent": {"version": "0.1.0", "pid": 42, "uptime_s": 12.5, "address": "192.0.2.1", "config": "/etc/h.yaml",
              "psample": "joined", "enobufs": 0, "kernel_drops": 17, "samples": 1500, "foreign": 3, "malformed": 2,
              "internal_errors": 1, "reloads": {"applied": 4, "rejected": 1}, "metrics": "127.0.0.1:9465"},
    "ports": [
        port_row(ovs=[{"bridge": "br-int", "port": "eth0", "interface": "eth0", "type": "system",
                       "external_ids": {"iface-id": "lp-1", "attached-mac": "fa:16:3e:00:00:01"}, "bridge_sflow": None}]),
        port_row(port="eth1", ifindex=70000, direction="egress", offload="failed", current_rate=None, samples=0,
                 error="port eth1: egress sampling is unavailable: ...", error_code="tc_state", heals={}),
    ],
    "disabled": [],
    "collectors": [
        {"target": "192.0.2.10:6343", "sent": 99, "errors": 5, "last_error": "ECONNREFUSED"},
        {"target": "sflow.invalid:6343", "sent": 0, "errors": 0, "last_error": "cannot resolve 'sflow.invalid': x"},
        {"target": "[2001:db8::1]:6343", "sent": 99, "errors": 0, "last_error": ""},
    ],
}


def test_every_status_figure_becomes_its_sample():
    got = samples(exposition(STATUS))

    def value(name: str, **labels) -> float:
        return got[(name, frozenset(labels.items()))]

    eth0 = {"port": "eth0", "ifindex": "4", "direction": "both"}
    eth1 = {"port": "eth1", "ifindex": "70000", "direction": "egress"}
    assert value("hwsflow_port_samples_total", **eth0) == 1234
    assert value("hwsflow_port_dropped_samples_total", **eth0) == 7
    assert value("hwsflow_port_sample_pool_packets_total", **eth0) == (5 << 32) + 3  # before the wire's wrap
    assert value("hwsflow_port_sampling_rate", **eth0) == 400
    assert value("hwsflow_port_current_sampling_rate", **eth0) == 400
    assert ("hwsflow_port_current_sampling_rate", frozenset(eth1.items())) not in got  # no filter, no figure
    assert {state: value("hwsflow_port_offload", **eth0, state=state) for state in OFFLOAD_STATES} == {
        state: 1.0 if state == "not_in_hw" else 0.0 for state in OFFLOAD_STATES}
    assert value("hwsflow_port_offload", **eth1, state="failed") == 1
    assert value("hwsflow_port_sampled", **eth0) == 1 and value("hwsflow_port_sampled", **eth1) == 0
    assert value("hwsflow_port_failed", **eth1, reason="tc_state") == 1
    assert not [k for k in got if k[0] == "hwsflow_port_failed" and dict(k[1])["port"] == "eth0"]
    assert value("hwsflow_port_heals_total", **eth0, cause="filter_missing") == 2
    assert value("hwsflow_port_heals_total", **eth0, cause="qdisc_missing") == 1
    assert value("hwsflow_psample_samples_total") == 1500
    assert value("hwsflow_psample_kernel_drops_total") == 17
    assert value("hwsflow_psample_foreign_samples_total") == 3
    assert value("hwsflow_psample_malformed_messages_total") == 2
    assert value("hwsflow_internal_errors_total") == 1
    assert value("hwsflow_psample_joined") == 1
    assert value("hwsflow_reloads_total", outcome="applied") == 4
    assert value("hwsflow_reloads_total", outcome="rejected") == 1
    assert value("hwsflow_build_info", version="0.1.0", path="python") == 1
    assert value("hwsflow_port_ovs_info", port="eth0", ifindex="4", bridge="br-int", ovs_port="eth0", iface_id="lp-1",
                 vm_uuid="") == 1
    assert [k for k in got if k[0] == "hwsflow_port_ovs_info"] == [
        ("hwsflow_port_ovs_info", frozenset({"port": "eth0", "ifindex": "4", "bridge": "br-int", "ovs_port": "eth0",
                                            "iface_id": "lp-1", "vm_uuid": ""}.items()))]  # eth1: no Open vSwitch
    assert value("hwsflow_collector_datagrams_sent_total", collector="192.0.2.10:6343") == 99
    assert value("hwsflow_collector_send_errors_total", collector="192.0.2.10:6343") == 5
    assert value("hwsflow_collector_last_error", collector="192.0.2.10:6343") == errno.ECONNREFUSED
    assert value("hwsflow_collector_last_error", collector="sflow.invalid:6343") == ERROR_WITHOUT_ERRNO
    assert value("hwsflow_collector_last_error", collector="[2001:db8::1]:6343") == 0


def test_kernel_drops_unknown_is_no_sample_rather_than_zero():
    waiting = {**STATUS, "agent": {**STATUS["agent"], "psample": "waiting for the psample module",
                                   "kernel_drops": None}}
    text = exposition(waiting)
    assert "# TYPE hwsflow_psample_kernel_drops_total counter" in text
    assert not re.search(r"^hwsflow_psample_kernel_drops_total ", text, re.M)
    assert "hwsflow_psample_joined 0.0" in text


def test_no_error_text_becomes_a_label():
    """Labels stay bounded: the error texts of the status appear nowhere in the exposition."""
    text = exposition(STATUS)
    assert "egress sampling is unavailable" not in text and "cannot resolve" not in text


@pytest.mark.parametrize("text,code", [
    ("", 0), ("ECONNREFUSED", errno.ECONNREFUSED), ("ENETUNREACH", errno.ENETUNREACH),
    ("error code dropped by sendmmsg", ERROR_WITHOUT_ERRNO), ("cannot resolve 'x': Name or service not known", -1),
    ("cannot connect to 192.0.2.1: Network is unreachable", -1), ("EXAMPLE", -1),
])
def test_collector_error_codes(text, code):
    assert error_code(text) == code


def test_heal_causes():
    assert heal_cause(filter_present=False, qdisc_created=True) == "qdisc_missing"
    assert heal_cause(filter_present=False, qdisc_created=False) == "filter_missing"
    assert heal_cause(filter_present=True, qdisc_created=False) == "filter_changed"


def test_failure_codes_are_errno_names_or_tc_state():
    refused = NetlinkError(errno.EOPNOTSUPP, "Operation not supported")
    try:
        raise tc.TcError("port p: offload is `required` ...") from refused
    except tc.TcError as err:
        wrapped = err
    assert failure_code(wrapped) == errno.errorcode[errno.EOPNOTSUPP]  # ENOTSUP: the same number on Linux
    assert failure_code(NetlinkError(errno.ENODEV, "No such device")) == "ENODEV"
    assert failure_code(OSError(errno.EBUSY, "busy")) == "EBUSY"
    assert failure_code(tc.TcError("port p: egress sampling is unavailable")) == "tc_state"


# ---------------------------------------------------------------- a running agent on this host


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def config_text(control: str, metrics: str | None) -> str:
    # a port that does not exist: no tc state is touched; a collector name that cannot resolve
    return (f"targets: ['127.0.0.1:9', 'sflow.invalid:6343']\ncontrol_socket: {control}\n"
            + (f"metrics: '{metrics}'\n" if metrics else "") + "ports: [{name: hwsfmet0}]\n")


def start_agent(config: Path, control: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "hwsflow", "run", "--config", str(config)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_until(lambda: request(control, Status(), timeout=5), proc)
    return proc


def wait_until(condition, proc: subprocess.Popen, deadline: float = 60.0):
    """condition()'s first true result; its exceptions (not running yet) count as false."""
    end = time.monotonic() + deadline
    while True:
        try:
            result = condition()
            if result:
                return result
        except (NotRunning, OSError, AssertionError):
            pass
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise AssertionError(proc.communicate(timeout=10)[0].decode(errors="replace"))
        time.sleep(0.05)  # a poll interval; the deadline above is what waits


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """`hwsflow run` serving metrics on [::1]; psample is absent here, so nothing moves while it runs."""
    tmp = tmp_path_factory.mktemp("metrics")
    port = _free_port("::1")
    control = str(tmp / "run" / "control.sock")
    config = tmp / "hwsflow.yaml"
    config.write_text(config_text(control, f"[::1]:{port}"))
    proc = start_agent(config, control)
    yield {"control": control, "url": f"http://[::1]:{port}/metrics", "config": config}
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        return answer.read().decode()


def test_a_scrape_matches_status_at_the_same_moment(agent):
    before = request(agent["control"], Status())["status"]
    text = scrape(agent["url"])
    after = request(agent["control"], Status())["status"]
    got = samples(text)
    for key in ("samples", "foreign", "malformed", "enobufs", "internal_errors", "kernel_drops"):
        assert before["agent"][key] == after["agent"][key], key  # the figures stood still around the scrape
    assert before["collectors"] == after["collectors"]
    agent_figures = {
        "hwsflow_psample_samples_total": before["agent"]["samples"],
        "hwsflow_psample_foreign_samples_total": before["agent"]["foreign"],
        "hwsflow_psample_malformed_messages_total": before["agent"]["malformed"],
        "hwsflow_psample_enobufs_total": before["agent"]["enobufs"],
        "hwsflow_internal_errors_total": before["agent"]["internal_errors"],
        "hwsflow_psample_joined": 0,  # no psample on this host: the agent waits for it, and says so
    }
    for name, figure in agent_figures.items():
        assert got[(name, frozenset())] == figure, name
    assert before["agent"]["kernel_drops"] is None
    assert not [k for k in got if k[0] == "hwsflow_psample_kernel_drops_total"]
    for outcome, count in before["agent"]["reloads"].items():
        assert got[("hwsflow_reloads_total", frozenset({"outcome": outcome}.items()))] == count
    for row in before["collectors"]:
        labels = frozenset({"collector": row["target"]}.items())
        assert got[("hwsflow_collector_datagrams_sent_total", labels)] == row["sent"]
        assert got[("hwsflow_collector_send_errors_total", labels)] == row["errors"]
        assert got[("hwsflow_collector_last_error", labels)] == error_code(row["last_error"])
    unresolved = frozenset({"collector": "sflow.invalid:6343"}.items())
    assert got[("hwsflow_collector_last_error", unresolved)] == ERROR_WITHOUT_ERRNO  # a real error, mapped
    assert before["agent"]["metrics"] == agent["url"].split("//")[1].removesuffix("/metrics")
    assert got[("process_start_time_seconds", frozenset())] > 0


def test_promtool_check_metrics_passes_on_the_endpoint(agent):
    text = scrape(agent["url"])
    check = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
    # promtool does object: a counter without _total fails the same check
    bad = subprocess.run([str(PROMTOOL), "check", "metrics"], capture_output=True, timeout=60,
                         input=b"# HELP hwsflow_x_count x\n# TYPE hwsflow_x_count counter\nhwsflow_x_count 1\n")
    assert bad.returncode != 0 and b"_total" in bad.stdout + bad.stderr


def test_the_metrics_key_in_use_stops_the_start_with_the_key_named(agent, tmp_path):
    """A second agent configured for the same endpoint exits before touching anything, naming the key."""
    config = tmp_path / "second.yaml"
    text = agent["config"].read_text().replace(agent["control"], str(tmp_path / "other.sock"))
    config.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "hwsflow", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"{config}: metrics: cannot listen on [::1]:" in proc.stderr and "Address already in use" in proc.stderr


def test_a_reload_starts_moves_and_stops_the_endpoint_and_is_counted(tmp_path):
    control = str(tmp_path / "run" / "control.sock")
    config = tmp_path / "hwsflow.yaml"
    config.write_text(config_text(control, None))
    proc = start_agent(config, control)
    first, second = _free_port("127.0.0.1"), _free_port("127.0.0.1")
    try:
        steps = []
        for metrics in (f"127.0.0.1:{first}", f"127.0.0.1:{second}", None, "not an address"):
            if metrics != "not an address":
                config.write_text(config_text(control, metrics))
            else:
                config.write_text(config_text(control, None).replace("ports:", f"metrics: {metrics}\nports:"))
            proc.send_signal(signal.SIGHUP)
            status = wait_until(lambda: (s := request(control, Status(), timeout=5)["status"])
                                and sum(s["agent"]["reloads"].values()) == len(steps) + 1 and s, proc)
            served = []
            for port in (first, second):
                try:
                    served.append("hwsflow_reloads_total" in scrape(f"http://127.0.0.1:{port}/metrics"))
                except OSError:
                    served.append(False)
            steps.append((status["agent"]["metrics"], served, status["agent"]["reloads"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert steps == [
        (f"127.0.0.1:{first}", [True, False], {"applied": 1, "rejected": 0}),
        (f"127.0.0.1:{second}", [False, True], {"applied": 2, "rejected": 0}),
        (None, [False, False], {"applied": 3, "rejected": 0}),
        (None, [False, False], {"applied": 3, "rejected": 1}),  # an invalid file: nothing changes, counted
    ], output
    assert "metrics: 'not an address': " in output


class LoopThread:
    """An event loop in a thread of its own, standing for the agent's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_a_failed_status_answers_503_with_one_log_line(caplog):
    def broken() -> dict:
        raise KeyError("ports")

    loop = LoopThread()
    port = _free_port("127.0.0.1")
    endpoint = MetricsEndpoint("127.0.0.1", port, broken, loop.loop)
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        endpoint.close()
        loop.close()
    assert info.value.code == 503
    assert [r.getMessage() for r in caplog.records] == ["metrics: a scrape failed: KeyError: 'ports'"]


def test_a_silent_client_is_dropped_and_others_are_served(monkeypatch):
    """A connection that sends nothing holds a thread only until the request timeout; meanwhile, and
    after, scrapes are answered."""
    monkeypatch.setattr(metrics_endpoint.MetricsRequestHandler, "timeout", 0.5)
    loop = LoopThread()
    port = _free_port("127.0.0.1")
    endpoint = MetricsEndpoint("127.0.0.1", port, lambda: STATUS, loop.loop)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as silent:
            assert "hwsflow_port_samples_total" in scrape(f"http://127.0.0.1:{port}/metrics")
            assert silent.recv(1024) == b""  # the server closed it: end of file, not our 30 s timeout
    finally:
        endpoint.close()
        loop.close()
    with pytest.raises(OSError):  # closed: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=5)


# ---------------------------------------------------------------- alert rules and dashboard


def test_promtool_checks_the_alert_rules():
    check = subprocess.run([str(PROMTOOL), "check", "rules", str(MONITORING / "hwsflow-rules.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "4 rules found" in check.stdout


def test_promtool_tests_the_alert_rules():
    """Each alert fires on the series that should raise it and no other (hwsflow-rules-test.yml)."""
    check = subprocess.run([str(PROMTOOL), "test", "rules", "hwsflow-rules-test.yml"], cwd=MONITORING,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_rules_alert_on_what_the_issue_names():
    rules = (MONITORING / "hwsflow-rules.yml").read_text()
    for alert in ("HwsflowLosingSamples", "HwsflowPortFailed", "HwsflowCollectorFailing"):
        assert f"alert: {alert}" in rules


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return {name for expr in exprs for name in re.findall(r"\b((?:hwsflow|process)_[a-z0-9_]+)\b", expr)}


def test_every_metric_the_dashboard_queries_is_exported(agent):
    # every family's TYPE line, with or without samples at this moment (a failed port, a heal)
    exported = set(re.findall(r"^# TYPE (\S+) ", scrape(agent["url"]), re.M))
    queried = dashboard_metric_names()
    assert len(queried) >= 15  # the dashboard does query the exporter's figures
    assert queried - exported == set()

