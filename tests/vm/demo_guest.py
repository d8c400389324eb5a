"""Guest side of `./dev demo`: a veth port, ping traffic, the real agent, and `hwsflow decode` as collector.

    python tests/vm/demo_guest.py RWDIR
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.vm.guest import AgentProcess, sh  # noqa: E402 - after the sys.path insert that lets the guest import tests.vm

NS = "hvdemo"
COLLECTOR_PORT = 16343
DATAGRAMS = 3
DEADLINE = 240.0


def main(rwdir: Path) -> int:
    try:
        return _demo(rwdir)
    finally:
        sh("ip", "netns", "del", NS, check=False)  # the veth pair goes with it


def _datagrams(decoded: Path) -> int:
    return decoded.read_text().count("sFlow v5 agent=")


def _demo(rwdir: Path) -> int:
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", "demo0", "type", "veth", "peer", "name", "demo0x", "netns", NS)
    sh("ip", "addr", "add", "198.51.100.1/24", "dev", "demo0")
    sh("ip", "link", "set", "demo0", "up")
    sh("ip", "netns", "exec", NS, "ip", "addr", "add", "198.51.100.2/24", "dev", "demo0x")
    sh("ip", "netns", "exec", NS, "ip", "link", "set", "demo0x", "up")
    decoded_path = rwdir / "decoded.txt"
    decoded = open(decoded_path, "w")  # noqa: SIM115 - the decoder process writes it until it is closed
    # no --count: the collector listens until the agent has stopped, so that the agent's last
    # datagrams find it there (a collector gone first makes the agent warn ECONNREFUSED)
    collector = subprocess.Popen(
        [sys.executable, "-m", "hwsflow", "decode", "--port", str(COLLECTOR_PORT)],
        cwd=REPO, stdout=decoded, stderr=subprocess.STDOUT,
    )
    agent = AgentProcess(rwdir, "demo", (
        "agent: 198.51.100.1\n"
        f"targets: ['127.0.0.1:{COLLECTOR_PORT}']\n"
        "sampling: 2\n"
        "header: 64\n"
        "polling: 0\n"
        "ports:\n  - name: demo0\n"
    ))
    try:
        agent.wait_ready()
        started = time.monotonic()
        while _datagrams(decoded_path) < DATAGRAMS and time.monotonic() - started < DEADLINE:
            # 20 pings at a time until the collector has printed its datagrams
            subprocess.run(["ip", "netns", "exec", NS, "ping", "-q", "-c", "20", "-i", "0.01", "198.51.100.1"],
                           capture_output=True)
    finally:
        code = agent.stop()
        collector.send_signal(signal.SIGINT)  # `hwsflow decode` ends with status 0 on Ctrl-C
        try:
            collector.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            collector.kill()
            collector.wait()
        decoded.close()
    return 0 if code == 0 and collector.returncode == 0 and _datagrams(decoded_path) >= DATAGRAMS else 1


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
