"""Guest-side helpers shared by every VM scenario module: shell, tc, ports, collectors, the agent process.

Stdlib only (plus tests.vm.frames): it runs inside the guest under software
emulation, where every import costs seconds.
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
from collections.abc import Callable
from pathlib import Path
from typing import cast

from tests.vm import frames

REPO = Path(__file__).resolve().parents[2]

NS = "hvtx"
# (watched port in the root namespace, its peer in NS)
PORTS = {"hsp0": "hsp0x", "hsp1": "hsp1x", "hsp2": "hsp2x"}
COLLECTOR_V4 = ("127.0.0.1", 16343)
COLLECTOR_V6 = ("::1", 16344)
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


def add_veth(port: str, peer: str) -> None:
    """A veth pair up, `port` here and `peer` in NS, carrying nothing but the frames a test sends."""
    sh("ip", "link", "add", port, "type", "veth", "peer", "name", peer, "netns", NS)
    sh("sysctl", "-qw", f"net.ipv6.conf.{port}.disable_ipv6=1")  # counters move only with test frames
    sh("ip", "link", "set", port, "up")
    sh("ip", "netns", "exec", NS, "ip", "link", "set", peer, "up")


def setup_ports() -> None:
    sh("ip", "netns", "add", NS)
    # no IPv6 autoconfiguration chatter from the peers: the ports then carry exactly the test frames
    for key in ("all", "default"):
        sh("ip", "netns", "exec", NS, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
    for port, peer in PORTS.items():
        add_veth(port, peer)
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
                data = cast(socket.socket, key.fileobj).recv(65536)
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
        """Stop receiving and free the ports for the next scenario's collector."""
        self.running = False
        self.thread.join()
        for key in list(self.selector.get_map().values()):
            cast(socket.socket, key.fileobj).close()
        self.selector.close()
        return {k: [d.hex() for d in v] for k, v in self.datagrams.items()}


def wait_for(condition: Callable[[], object], deadline: float, what: str, interval: float = 0.05) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > deadline:
            raise TimeoutError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(interval)  # a poll interval, not a wait for an outcome
    return time.monotonic() - start


class AgentProcess:
    """`hwsflow run` with a private NOTIFY_SOCKET, so readiness is the agent's own READY=1."""

    def __init__(self, rwdir: Path, name: str, config: str, log_path: Path | None = None) -> None:
        self.config_path = rwdir / f"{name}.yaml"
        self.config_path.write_text(config)
        self.log_path = log_path or rwdir / f"{name}.log"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = f"\0hwsflow-test-{name}-{os.getpid()}"
        self.notify.bind(notify_path)
        env = dict(os.environ, NOTIFY_SOCKET="@" + notify_path[1:], PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "w")  # noqa: SIM115 - the agent writes it for its life; stop() closes it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hwsflow", "run", "--config", str(self.config_path)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()

    def wait_ready(self) -> float:
        """Seconds from the start until the agent said READY=1."""
        self.wait_notify("READY=1")
        return time.monotonic() - self.started

    def wait_notify(self, state: str) -> float:
        """Wait for the agent to send state (e.g. READY=1 after a reload) to its NOTIFY_SOCKET; seconds waited."""
        start = time.monotonic()
        self.notify.settimeout(0.5)  # a poll interval: the deadline is READY_DEADLINE
        while time.monotonic() - start < READY_DEADLINE:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}; log:\n{self.log_path.read_text()}")
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            if state in message.split("\n"):
                return time.monotonic() - start
        raise TimeoutError(f"no {state} within {READY_DEADLINE:.0f} s; log:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: the agent gets no chance to clean up."""
        self.proc.kill()
        self.proc.wait(STOP_DEADLINE)
        self.log.close()
        self.notify.close()

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


def send_from_namespace(peer: str, tag: int, count: int, first: int = 0) -> None:
    sh("ip", "netns", "exec", NS, sys.executable, "-m", "tests.vm.frames", peer, str(tag), str(count), str(first))


