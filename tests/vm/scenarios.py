"""Guest side of the VM tests: run every kernel scenario in one boot and record what happened.

    python tests/vm/scenarios.py RWDIR

It only does what needs the real kernel: ports in namespaces, foreign filters,
traffic, the real `hwsflow run`, and capture at two collectors.  It writes
RWDIR/results.json; the host-side tests (test_vm_pipeline.py) decode and judge
it.  Every wait polls a condition against a generous deadline: under software
emulation the guest is many times slower than the host.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.vm import frames  # noqa: E402

NS = "hvtx"
# (watched port in the root namespace, its peer in NS)
PORTS = {"hsp0": "hsp0x", "hsp1": "hsp1x", "hsp2": "hsp2x"}
COLLECTOR_V4 = ("127.0.0.1", 16343)
COLLECTOR_V6 = ("::1", 16344)
TAG_HSP0, TAG_HSP1_IN, TAG_HSP1_OUT, TAG_HSP1_LATE, TAG_BARRIER = 0, 1, 2, 3, 9
LATE_FRAMES = 40  # into hsp1 after its pool was re-synced from tc
POLLING = 2  # s, counter polling interval of the pipeline scenario
COUNTS = {TAG_HSP0: 200, TAG_HSP1_IN: 400, TAG_HSP1_OUT: 400}
READY_DEADLINE = 240.0
TRAFFIC_DEADLINE = 240.0
STOP_DEADLINE = 120.0


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def tc_json(*argv: str) -> object:
    out = sh("tc", "-s", "-j", *argv)
    return json.loads(out) if out.strip() else []


def ifindex(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/ifindex").read_text())


def setup_ports() -> None:
    sh("ip", "netns", "add", NS)
    # no IPv6 autoconfiguration chatter from the peers: the ports then carry exactly the test frames
    for key in ("all", "default"):
        sh("ip", "netns", "exec", NS, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
    for port, peer in PORTS.items():
        sh("ip", "link", "add", port, "type", "veth", "peer", "name", peer, "netns", NS)
        sh("sysctl", "-qw", f"net.ipv6.conf.{port}.disable_ipv6=1")  # counters move only with test frames
        sh("ip", "link", "set", port, "up")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", peer, "up")
    # hsp0 looks like an Open vSwitch port: a plain ingress qdisc and a filter at a later priority
    sh("tc", "qdisc", "add", "dev", "hsp0", "ingress")
    sh("tc", "filter", "add", "dev", "hsp0", "ingress", "prio", "5", "protocol", "all",
       "matchall", "action", "gact", "pass")
    sh("tc", "qdisc", "add", "dev", "hsp2", "ingress")


class Collector:
    """Receives sFlow datagrams on an IPv4 and an IPv6 socket, in a thread."""

    def __init__(self) -> None:
        self.datagrams: dict[str, list[bytes]] = {"v4": [], "v6": []}
        self.lock = threading.Lock()
        self.selector = selectors.DefaultSelector()
        for key, family, address in (("v4", socket.AF_INET, COLLECTOR_V4), ("v6", socket.AF_INET6, COLLECTOR_V6)):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.bind(address)
            self.selector.register(sock, selectors.EVENT_READ, key)
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.running:
            for key, _ in self.selector.select(0.2):
                data = key.fileobj.recv(65536)
                with self.lock:
                    self.datagrams[key.data].append(data)

    def seen(self, which: str, tag: int) -> set[int]:
        """Indexes of test frames with this tag found in the datagrams (header bytes are embedded verbatim)."""
        pattern = re.compile(re.escape(frames.MAGIC + tag.to_bytes(2, "big")) + b"(....)", re.S)
        with self.lock:
            blobs = list(self.datagrams[which])
        return {int.from_bytes(m.group(1), "big") for blob in blobs for m in pattern.finditer(blob)}

    def count(self, which: str) -> int:
        with self.lock:
            return len(self.datagrams[which])

    def has_after(self, which: str, start: int, needle: bytes) -> bool:
        """Whether a datagram received after the first `start` ones contains needle."""
        with self.lock:
            return any(needle in d for d in self.datagrams[which][start:])

    def stop(self) -> dict[str, list[str]]:
        self.running = False
        self.thread.join()
        return {k: [d.hex() for d in v] for k, v in self.datagrams.items()}


def wait_for(condition, deadline: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > deadline:
            raise TimeoutError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(0.05)  # a poll interval, not a wait for an outcome
    return time.monotonic() - start


class AgentProcess:
    """`hwsflow run` with a private NOTIFY_SOCKET, so readiness is the agent's own READY=1."""

    def __init__(self, rwdir: Path, name: str, config: str) -> None:
        self.config_path = rwdir / f"{name}.yaml"
        self.config_path.write_text(config)
        self.log_path = rwdir / f"{name}.log"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = f"\0hwsflow-test-{name}-{os.getpid()}"
        self.notify.bind(notify_path)
        env = dict(os.environ, NOTIFY_SOCKET="@" + notify_path[1:], PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hwsflow", "run", "--config", str(self.config_path)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()

    def wait_ready(self) -> float:
        self.notify.settimeout(0.5)  # a poll interval: the deadline is READY_DEADLINE
        while time.monotonic() - self.started < READY_DEADLINE:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}; log:\n{self.log_path.read_text()}")
            try:
                message = self.notify.recv(4096).decode()
            except socket.timeout:
                continue
            if "READY=1" in message.split("\n"):
                return time.monotonic() - self.started
        raise TimeoutError(f"no READY=1 within {READY_DEADLINE:.0f} s; log:\n{self.log_path.read_text()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
        self.log.close()
        self.notify.close()
        return code


def agent_config(ports: str, sampling: int = 1, polling: int = 0) -> str:
    return (
        "agent: 192.0.2.1\n"
        f"targets: ['{COLLECTOR_V4[0]}:{COLLECTOR_V4[1]}', '[{COLLECTOR_V6[0]}]:{COLLECTOR_V6[1]}']\n"
        f"sampling: {sampling}\n"
        "header: 128\n"
        f"polling: {polling}\n"
        "group_base: 3000\n"
        f"ports:\n{ports}"
    )


def wait_counters_after(collector: Collector, out: dict, key: str) -> None:
    """Wait for a counter sample of hsp0 and hsp1 in datagrams that arrive from now on."""
    start = collector.count("v4")
    out[key] = wait_for(
        lambda: all(collector.has_after("v4", start, b"\0\0\0\x04" + p.encode()) for p in ("hsp0", "hsp1")),
        TRAFFIC_DEADLINE, "counter samples after the traffic")


def send_from_namespace(peer: str, tag: int, count: int, first: int = 0) -> None:
    sh("ip", "netns", "exec", NS, sys.executable, "-m", "tests.vm.frames", peer, str(tag), str(count), str(first))


def scenario_pipeline(rwdir: Path, out: dict) -> None:
    """Sampling end to end, then SIGTERM removes hwsflow's filters and only those."""
    collector = Collector()
    agent = AgentProcess(rwdir, "pipeline", agent_config(
        "  - name: hsp0\n"
        "  - name: hsp1\n    sampling: 4\n    header: 64\n    direction: both\n",
        polling=POLLING,
    ))
    out["pipeline_ready_s"] = agent.wait_ready()
    out["tc_running"] = {
        "hsp0_ingress": tc_json("filter", "show", "dev", "hsp0", "ingress"),
        "hsp1_ingress": tc_json("filter", "show", "dev", "hsp1", "ingress"),
        "hsp1_egress": tc_json("filter", "show", "dev", "hsp1", "egress"),
        "hsp1_qdisc": tc_json("qdisc", "show", "dev", "hsp1"),
    }
    t0 = time.monotonic()
    send_from_namespace("hsp0x", TAG_HSP0, COUNTS[TAG_HSP0])
    send_from_namespace("hsp1x", TAG_HSP1_IN, COUNTS[TAG_HSP1_IN])
    frames.send("hsp1", TAG_HSP1_OUT, COUNTS[TAG_HSP1_OUT])
    out["send_s"] = time.monotonic() - t0
    # hsp0 samples every packet: once all of them and a later barrier frame reached both
    # collectors, everything sampled before the barrier has been exported too
    everything = set(range(COUNTS[TAG_HSP0]))
    out["hsp0_wait_s"] = wait_for(
        lambda: all(collector.seen(k, TAG_HSP0) >= everything for k in ("v4", "v6")),
        TRAFFIC_DEADLINE, "every hsp0 sample at both collectors")
    send_from_namespace("hsp0x", TAG_BARRIER, 1)
    wait_for(lambda: all(collector.seen(k, TAG_BARRIER) for k in ("v4", "v6")), TRAFFIC_DEADLINE, "the barrier")
    # a counter sample of each port after the traffic: its port's pool was re-synced from tc just before
    wait_counters_after(collector, out, "counters_wait_s")
    # hsp1's late samples then build on the re-synced pool
    send_from_namespace("hsp1x", TAG_HSP1_LATE, LATE_FRAMES)
    send_from_namespace("hsp0x", TAG_BARRIER, 1, first=1)
    wait_for(lambda: all(1 in collector.seen(k, TAG_BARRIER) for k in ("v4", "v6")), TRAFFIC_DEADLINE,
             "the second barrier")
    # counter samples taken after all traffic must equal the links' final stats
    wait_counters_after(collector, out, "final_counters_wait_s")
    out["link_stats"] = {p: json.loads(sh("ip", "-s", "-j", "link", "show", p))[0]["stats64"] for p in ("hsp0", "hsp1")}
    out["tc_before_stop"] = {
        "hsp0_ingress": tc_json("filter", "show", "dev", "hsp0", "ingress"),
        "hsp1_ingress": tc_json("filter", "show", "dev", "hsp1", "ingress"),
        "hsp1_egress": tc_json("filter", "show", "dev", "hsp1", "egress"),
    }
    out["pipeline_exit"] = agent.stop()
    out["tc_after_stop"] = {
        "hsp0_ingress": tc_json("filter", "show", "dev", "hsp0", "ingress"),
        "hsp0_qdisc": tc_json("qdisc", "show", "dev", "hsp0"),
        "hsp1_ingress": tc_json("filter", "show", "dev", "hsp1", "ingress"),
        "hsp1_egress": tc_json("filter", "show", "dev", "hsp1", "egress"),
        "hsp1_qdisc": tc_json("qdisc", "show", "dev", "hsp1"),
    }
    out["datagrams"] = collector.stop()
    out["pipeline_log"] = agent.log_path.read_text()


def scenario_refusals(rwdir: Path, out: dict) -> None:
    """Offload `required` on a port that cannot offload, egress on a plain ingress qdisc, a missing port."""
    before = {name: tc_json("filter", "show", "dev", name, "ingress") for name in ("hsp0", "hsp2")}
    agent = AgentProcess(rwdir, "refusals", agent_config(
        "  - name: hsp0\n    offload: required\n"
        "  - name: hsp2\n    direction: egress\n"
        "  - name: nosuchport0\n"
    ))
    out["refusals_ready_s"] = agent.wait_ready()
    out["refusals_exit"] = agent.stop()
    out["refusals_log"] = agent.log_path.read_text()
    out["refusals_tc_before"] = before
    out["refusals_tc_after"] = {name: tc_json("filter", "show", "dev", name, "ingress") for name in ("hsp0", "hsp2")}


def scenario_config_error(rwdir: Path, out: dict) -> None:
    """A bad config exits 2 and touches no tc state."""
    path = rwdir / "bad.yaml"
    path.write_text(agent_config("  - name: hsp1\n    sampling: 0\n"))
    before = tc_json("qdisc", "show", "dev", "hsp1")
    proc = subprocess.run([sys.executable, "-m", "hwsflow", "run", "--config", str(path)],
                          cwd=REPO, capture_output=True, text=True)
    out["config_error"] = {"exit": proc.returncode, "stderr": proc.stderr, "path": str(path),
                           "qdisc_before": before, "qdisc_after": tc_json("qdisc", "show", "dev", "hsp1")}


def main(rwdir: Path) -> int:
    out: dict = {"kernel": os.uname().release, "errors": []}
    t0 = time.monotonic()
    try:
        setup_ports()
        out["ifindex"] = {name: ifindex(name) for name in PORTS}
        out["counts"] = {str(k): v for k, v in COUNTS.items()}
        for scenario in (scenario_pipeline, scenario_refusals, scenario_config_error):
            try:
                scenario(rwdir, out)
            except Exception as err:  # record and go on: one boot serves every scenario
                out["errors"].append(f"{scenario.__name__}: {type(err).__name__}: {err}")
    except Exception as err:
        out["errors"].append(f"setup: {type(err).__name__}: {err}")
    out["guest_s"] = time.monotonic() - t0
    (rwdir / "results.json").write_text(json.dumps(out, indent=1))
    return 0 if not out["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
