"""Guest side of `./dev demo`: a veth port, ping traffic, the real agent, and `hwsflow decode` as collector.

    python tests/vm/demo_guest.py RWDIR
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.vm.guest import AgentProcess, sh  # noqa: E402

NS = "hvdemo"
COLLECTOR_PORT = 16343
DATAGRAMS = 3
DEADLINE = 240.0


def main(rwdir: Path) -> int:
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", "demo0", "type", "veth", "peer", "name", "demo0x", "netns", NS)
    sh("ip", "addr", "add", "198.51.100.1/24", "dev", "demo0")
    sh("ip", "link", "set", "demo0", "up")
    sh("ip", "netns", "exec", NS, "ip", "addr", "add", "198.51.100.2/24", "dev", "demo0x")
    sh("ip", "netns", "exec", NS, "ip", "link", "set", "demo0x", "up")
    decoded = open(rwdir / "decoded.txt", "w")
    collector = subprocess.Popen(
        [sys.executable, "-m", "hwsflow", "decode", "--port", str(COLLECTOR_PORT), "--count", str(DATAGRAMS)],
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
    agent.wait_ready()
    started = time.monotonic()
    while collector.poll() is None and time.monotonic() - started < DEADLINE:
        # 20 pings at a time until the collector has printed its datagrams
        subprocess.run(["ip", "netns", "exec", NS, "ping", "-q", "-c", "20", "-i", "0.01", "198.51.100.1"],
                       capture_output=True)
    code = agent.stop()
    if collector.poll() is None:
        collector.kill()
    decoded.close()
    return 0 if code == 0 and collector.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
