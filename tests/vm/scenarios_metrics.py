"""Guest side of the metrics scenario (issue 18): a real Prometheus server scrapes the running agent.

Debian's prometheus binary (unpacked by tools/setup-test-env into .cache/prometheus,
which the guest sees through the shared root file system) runs on loopback with
a temporary storage path, a 1 s scrape interval and the repository's alert rules.

The moment both sides are read: frames are sent and every one is seen at the
collector, so nothing moves any more (no traffic, no counter polling); then
`hwsflow status --json` is read, Prometheus is waited for until it has scraped
after that read, its instant queries are taken, and the status is read again.
The two status reads must agree (the figures were still), and the host-side test
(tests/vm/test_vm_metrics.py) compares the query answers with them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.vm.guest import (
    COLLECTOR_V4, COLLECTOR_V6, REPO, TRAFFIC_DEADLINE, AgentProcess, Collector, add_veth, send_from_namespace,
    sh, wait_for,
)

PORT, PEER = "hme0", "hme0x"  # sampled 1-in-1: every frame is a sample
FAILED, FAILED_PEER = "hme1", "hme1x"  # a plain ingress qdisc and direction egress: the port fails, reason tc_state
TAGS = (40, 41)  # two rounds: the second one's sends meet the refused collector's ICMP error
FRAMES = 25  # per round
METRICS = ("127.0.0.1", 19465)
PROMETHEUS = ("127.0.0.1", 19090)
REFUSED = "127.0.0.1:9"  # nothing listens: sends to it fail with ECONNREFUSED
SOCKET = "/run/hwsflow-metrics/control.sock"
PROMETHEUS_BIN = REPO / ".cache/prometheus/usr/bin"
RULES = REPO / "monitoring/hwsflow-rules.yml"

# what the host-side test compares: PromQL query -> where its answer is in the status
QUERIES = [
    "hwsflow_port_samples_total", "hwsflow_port_dropped_samples_total", "hwsflow_port_sample_pool_packets_total",
    "hwsflow_port_sampling_rate", "hwsflow_port_current_sampling_rate", "hwsflow_port_offload == 1",
    "hwsflow_port_sampled", "hwsflow_port_failed", "hwsflow_port_heals_total",
    "hwsflow_psample_samples_total", "hwsflow_psample_kernel_drops_total", "hwsflow_psample_foreign_samples_total",
    "hwsflow_psample_malformed_messages_total", "hwsflow_internal_errors_total", "hwsflow_reloads_total",
    "hwsflow_collector_datagrams_sent_total", "hwsflow_collector_send_errors_total", "hwsflow_collector_last_error",
    "hwsflow_build_info", "up{job=\"hwsflow\"}", "ALERTS",
]


def _config(sampling: int) -> str:
    return (
        "agent: 192.0.2.1\n"
        f"targets: ['{COLLECTOR_V4[0]}:{COLLECTOR_V4[1]}', '[{COLLECTOR_V6[0]}]:{COLLECTOR_V6[1]}', '{REFUSED}']\n"
        f"sampling: {sampling}\nheader: 128\npolling: 0\ngroup_base: 5000\n"
        f"control_socket: {SOCKET}\nmetrics: '{METRICS[0]}:{METRICS[1]}'\n"
        f"ports:\n  - name: {PORT}\n  - name: {FAILED}\n    direction: egress\n"
    )


def _polled() -> dict:
    """The status straight from the control socket: for polling, where starting the CLI each time would
    cost seconds under emulation.  The moment's two reads go through the CLI (_status)."""
    from hwsflow.core.control import Status
    from hwsflow.linux.control_socket import request
    return request(SOCKET, Status(), timeout=TRAFFIC_DEADLINE)["status"]


def _status() -> dict:
    """`hwsflow status --json`, as an operator reads it."""
    proc = subprocess.run([sys.executable, "-m", "hwsflow", "status", "--json", "--socket", SOCKET], cwd=REPO,
                          capture_output=True, text=True, timeout=TRAFFIC_DEADLINE, check=True)
    return json.loads(proc.stdout)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.read()


def _api(path: str, **params: str) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    answer = json.loads(_get(f"http://{PROMETHEUS[0]}:{PROMETHEUS[1]}/api/v1/{path}{query}"))
    if answer.get("status") != "success":
        raise RuntimeError(f"prometheus {path}: {answer}")
    return answer["data"]


def _target() -> dict | None:
    targets = _api("targets")["activeTargets"]
    return targets[0] if targets else None


def _scraped_after(moment: float) -> bool:
    """Whether Prometheus finished a healthy scrape that started after `moment` (wall clock)."""
    target = _target()
    if target is None or target["health"] != "up" or target["lastScrape"].startswith("0001"):
        return False
    # lastScrape is RFC 3339 with nanoseconds; the samples' own timestamps say the same, simpler to read
    stamps = _api("query", query='timestamp(up{job="hwsflow"})')["result"]
    return bool(stamps) and float(stamps[0]["value"][1]) > moment


def _start_prometheus(rwdir: Path, storage: Path) -> subprocess.Popen:
    config = rwdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n  - job_name: hwsflow\n"
        f"    static_configs: [{{targets: ['{METRICS[0]}:{METRICS[1]}']}}]\n"
    )
    log = open(rwdir / "prometheus.log", "w")  # noqa: SIM115 - Prometheus writes it for its life
    return subprocess.Popen(
        [str(PROMETHEUS_BIN / "prometheus"), f"--config.file={config}", f"--storage.tsdb.path={storage}",
         f"--web.listen-address={PROMETHEUS[0]}:{PROMETHEUS[1]}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=rwdir,
    )


def _prometheus_ready() -> bool:
    try:
        return _get(f"http://{PROMETHEUS[0]}:{PROMETHEUS[1]}/-/ready").startswith(b"Prometheus Server is Ready")
    except OSError:
        return False


def _our_filter_handle(port: str) -> str | None:
    for flt in json.loads(sh("tc", "-j", "filter", "show", "dev", port, "ingress") or "[]"):
        for action in flt.get("options", {}).get("actions", []):
            if action.get("kind") == "sample" and action.get("cookie", "").startswith(b"hwsflow\x01".hex()):
                return str(flt["pref"])
    return None


def scenario_metrics(rwdir: Path, out: dict) -> None:
    res: dict = out.setdefault("metrics", {})
    add_veth(PORT, PEER)
    add_veth(FAILED, FAILED_PEER)
    sh("tc", "qdisc", "add", "dev", FAILED, "ingress")  # as Open vSwitch leaves it: no clsact for egress
    # Prometheus mmaps its files, which the 9p share under rwdir refuses: its storage is a tmpfs of its own
    storage = Path(tempfile.mkdtemp(prefix="hwsflow-prometheus-"))
    sh("mount", "-t", "tmpfs", "-o", "size=256m", "hwsflow-prometheus", str(storage))
    collector = Collector()
    agent = AgentProcess(rwdir, "metrics", _config(sampling=2))
    prometheus = _start_prometheus(rwdir, storage)
    try:
        res["ready_s"] = agent.wait_ready()
        res["prometheus_ready_s"] = wait_for(_prometheus_ready, TRAFFIC_DEADLINE, "prometheus ready")
        # a reload that changes the port's rate to 1-in-1, so every frame is a sample
        (rwdir / "metrics.yaml").write_text(_config(sampling=1))
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_notify("READY=1")
        wait_for(lambda: _polled()["agent"]["reloads"]["applied"] == 1, TRAFFIC_DEADLINE, "the reload applied")
        # another program deletes hwsflow's filter: the agent reinstalls it (a heal, cause filter_missing)
        pref = _our_filter_handle(PORT)
        if pref is None:
            raise RuntimeError(f"no hwsflow filter on {PORT}")
        sh("tc", "filter", "del", "dev", PORT, "ingress", "pref", pref)
        wait_for(lambda: sum(_row(_polled(), PORT)["heals"].values()) == 1, TRAFFIC_DEADLINE, "the filter healed")
        wait_for(lambda: _our_filter_handle(PORT) is not None, TRAFFIC_DEADLINE, "the filter back")
        everything = set(range(FRAMES))
        for tag in TAGS:
            send_from_namespace(PEER, tag, FRAMES)
            res[f"frames_{tag}_wait_s"] = wait_for(
                lambda: all(collector.seen(k, tag) >= everything for k in ("v4", "v6")),  # noqa: B023 - called at once, within this iteration
                TRAFFIC_DEADLINE, f"every frame of round {tag} at both collectors")
        wait_for(lambda: _collector(_polled(), REFUSED)["errors"] > 0, TRAFFIC_DEADLINE,
                 "an error on the refused collector")
        # the moment: nothing moves; read status, wait for a scrape after it, query, read status again
        res["status_before"] = _status()
        moment = time.time()
        res["scrape_wait_s"] = wait_for(lambda: _scraped_after(moment), TRAFFIC_DEADLINE, "a scrape after the read")
        res["queries"] = {query: _api("query", query=query)["result"] for query in QUERIES}
        res["status_after"] = _status()
        res["target"] = _target()
        # promtool on what the endpoint serves, and the endpoint's own text for the host to read
        text = _get(f"http://{METRICS[0]}:{METRICS[1]}/metrics")
        res["exposition"] = text.decode()
        check = subprocess.run([str(PROMETHEUS_BIN / "promtool"), "check", "metrics"], input=text,
                               capture_output=True, timeout=TRAFFIC_DEADLINE)
        res["promtool"] = {"exit": check.returncode, "output": (check.stdout + check.stderr).decode()}
        res["rules"] = _api("rules")["groups"]
    finally:
        prometheus.terminate()
        try:
            res["prometheus_exit"] = prometheus.wait(TRAFFIC_DEADLINE)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            res["prometheus_exit"] = -9
        res["exit"] = agent.stop()
        res["log"] = agent.log_path.read_text()
        res["prometheus_log"] = (rwdir / "prometheus.log").read_text()[-4000:]
        collector.stop()
        sh("umount", str(storage), check=False)
        for port in (PORT, FAILED):
            sh("ip", "link", "del", port, check=False)


def _row(status: dict, port: str) -> dict:
    return next(row for row in status["ports"] if row["port"] == port)


def _collector(status: dict, target: str) -> dict:
    return next(row for row in status["collectors"] if row["target"] == target)


SCENARIOS = [scenario_metrics]
