"""Guest side of the back-off test: a flood far over what the agent takes, on a real kernel.

Run by tests/vm/scenarios.py in the shared boot; everything goes under
out["backoff"], and tests/vm/test_vm_backoff.py judges it on the host.

Two ports sampled 1-in-1 with a small budget (max_samples_per_s: BUDGET):
FLOOD_PORT gets a flood as fast as a Python sender goes for FLOOD_S seconds
(thousands of frames a second: far over the budget and over what the agent
drains under emulation), HEALTHY_PORT a steady trickle of tagged frames from
before the flood until after the rate came back.  The guest records the
kernel's view as it goes (the sample action's rate, index and packet counter,
the psample socket's drops), the agent's status, and every datagram.

Run as `python -m tests.vm.scenarios_backoff IFACE SECONDS` inside the
namespace to flood.  Stdlib only: it runs under software emulation.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.vm import frames
from tests.vm.guest import NS, TRAFFIC_DEADLINE, AgentProcess, Collector, COLLECTOR_V4, add_veth, sh, tc_json, wait_for

FLOOD_PORT, FLOOD_PEER = "hsb0", "hsb0x"
HEALTHY_PORT, HEALTHY_PEER = "hsb1", "hsb1x"
GROUP_BASE = 3200  # apart from the other scenarios' groups
BUDGET = 200  # samples/s for the whole agent
HOLD = 2  # s under half the budget before the rate steps back
FLOOD_S = 15.0  # s of flood: long enough that the back-off comes during it on a loaded host
# frames/s of the flood: 30 times the budget, and more than the agent drains under emulation (about 3,000
# samples/s); paced, so that the samples queued before the back-off fit RCVBUF whatever the host's load
FLOOD_PPS = 6000
RCVBUF = 128 << 20  # about 170,000 queued samples: 28 s of the flood at 1-in-1
TRICKLE_INTERVAL = 0.05  # s between the healthy port's frames: 20 a second, a tenth of the budget
LATE = 20  # frames through the flood port once its rate is back, after a pool re-sync
TAG_TRICKLE, TAG_LATE = 50, 51
SOCKET = "/run/hwsflow-backoff/control.sock"  # on the guest's own /run: the shared rwdir cannot hold a socket
POLL = 0.1  # s between looks at the kernel's rate (each runs `tc`, which costs the guest's CPU under emulation)


def flood(ifname: str, seconds: float, pps: int) -> int:
    """One frame, sent again and again at about pps until the time is up; how many went out."""
    import socket

    frame = frames.make_frame(0xFFFF, 0)[:60]
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        start = time.monotonic()
        while (now := time.monotonic()) < start + seconds:
            due = (now - start) * pps
            if sent > due:
                time.sleep(0.005)  # pacing the flood, not waiting for an outcome
                continue
            if sent < due - pps * 0.1:
                start = now - sent / pps  # the sender was descheduled: go on at the pace, never in a burst
            for _ in range(50):
                sock.send(frame)
            sent += 50
    return sent


def sample_action(port: str) -> dict:
    """rate, index and packets of hwsflow's ingress sample action on the port, as the kernel has them."""
    found = [action for flt in tc_json("filter", "show", "dev", port, "ingress") if "options" in flt
             for action in flt["options"].get("actions", []) if action.get("kind") == "sample"]
    if len(found) != 1:
        raise RuntimeError(f"port {port}: expected one sample action, found {found}")
    action = found[0]
    return {"rate": int(action["rate"]), "index": int(action["index"]), "packets": int(action["stats"]["packets"]),
            "group": int(action["group"])}


def psample_drops(pid: int) -> int:
    from tests.vm.scenarios_accounting import netlink_row
    return netlink_row(pid)["Drops"]


def status() -> dict:
    from hwsflow.core.control import Status
    from hwsflow.linux.control_socket import request
    reply: dict = request(SOCKET, Status(), timeout=TRAFFIC_DEADLINE)["status"]
    return reply


def counter_samples_since(collector: Collector, start: int, needle: bytes) -> int:
    """Counter samples (their port name record) in the datagrams received after the first `start`."""
    with collector.lock:
        return sum(d.count(needle) for d in collector.datagrams["v4"][start:])


def config() -> str:
    return (
        "agent: 192.0.2.1\n"
        f"targets: ['{COLLECTOR_V4[0]}:{COLLECTOR_V4[1]}']\n"
        "sampling: 1\n"
        "header: 64\n"
        "polling: 2\n"  # counter samples (and pool re-syncs) every 2 s: they mark the re-syncs
        f"rcvbuf: {RCVBUF}\n"
        f"group_base: {GROUP_BASE}\n"
        f"control_socket: {SOCKET}\n"
        f"max_samples_per_s: {BUDGET}\n"
        f"backoff_hold: {HOLD}\n"
        f"ports:\n  - name: {FLOOD_PORT}\n  - name: {HEALTHY_PORT}\n"
    )


def watch_rate(result: dict, key: str, until, deadline: float) -> None:
    """Poll the flood port's action until `until(action)`; record when and what the kernel showed."""
    t0 = time.monotonic()
    while True:
        action = sample_action(FLOOD_PORT)
        if until(action):
            result[key] = {"at": time.monotonic(), **action}
            return
        if time.monotonic() - t0 > deadline:
            raise TimeoutError(f"{key}: the kernel still showed {action} after {deadline:.0f} s")
        time.sleep(POLL)  # a poll interval: the deadline is the bound


def scenario_backoff(rwdir: Path, out: dict) -> None:
    result = out.setdefault("backoff", {"budget": BUDGET, "hold": HOLD, "flood_s": FLOOD_S, "late": LATE})
    add_veth(FLOOD_PORT, FLOOD_PEER)
    add_veth(HEALTHY_PORT, HEALTHY_PEER)
    result["ifindex"] = {p: int(Path(f"/sys/class/net/{p}/ifindex").read_text()) for p in (FLOOD_PORT, HEALTHY_PORT)}
    collector = Collector()
    agent = AgentProcess(rwdir, "backoff", config())
    started = time.monotonic()
    trickle = None
    try:
        result["ready_s"] = agent.wait_ready()
        pid = agent.proc.pid
        trickle = subprocess.Popen(
            ["ip", "netns", "exec", NS, sys.executable, "-m", "tests.vm.frames", HEALTHY_PEER, str(TAG_TRICKLE), "0",
             "0", str(TRICKLE_INTERVAL)], stdout=subprocess.PIPE, text=True)
        wait_for(lambda: collector.seen("v4", TAG_TRICKLE), TRAFFIC_DEADLINE, "the first trickle sample")
        result["before"] = sample_action(FLOOD_PORT)
        result["drops_before"] = psample_drops(pid)
        flooder = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-m", "tests.vm.scenarios_backoff",
                                    FLOOD_PEER, str(FLOOD_S), str(FLOOD_PPS)], stdout=subprocess.PIPE, text=True)
        # the flood's start, as the kernel counts it, then the rate change, as the kernel reports it
        watch_rate(result, "flood_seen", lambda a: a["packets"] > result["before"]["packets"], TRAFFIC_DEADLINE)
        watch_rate(result, "backed_off", lambda a: a["rate"] > 1, TRAFFIC_DEADLINE)
        result["drops_at_backoff"] = psample_drops(pid)
        result["status_backed_off"] = status()
        result["flood_sent"] = int(flooder.communicate(timeout=TRAFFIC_DEADLINE)[0].strip())
        result["flood_end"] = {"at": time.monotonic(), **sample_action(FLOOD_PORT)}
        result["drops_flood_end"] = psample_drops(pid)
        # the rate comes back once the load stayed under half the budget for the hold
        watch_rate(result, "restored", lambda a: a["rate"] == 1, TRAFFIC_DEADLINE)
        trickle.terminate()
        result["trickle_sent"] = int(trickle.communicate(timeout=TRAFFIC_DEADLINE)[0].strip())
        trickle = None
        result["trickle_wait_s"] = wait_for(
            lambda: collector.seen("v4", TAG_TRICKLE) >= set(range(result["trickle_sent"])), TRAFFIC_DEADLINE,
            "every trickle frame's sample")
        # every flood sample handled, then two pool re-syncs (a counter sample each) before the late frames
        from tests.vm.scenarios_accounting import netlink_row
        wait_for(lambda: netlink_row(pid)["Rmem"] == 0, TRAFFIC_DEADLINE, "the agent to drain its psample socket")
        start = collector.count("v4")
        needle = len(FLOOD_PORT).to_bytes(4, "big") + FLOOD_PORT.encode()
        result["resync_wait_s"] = wait_for(lambda: counter_samples_since(collector, start, needle) >= 2,
                                           TRAFFIC_DEADLINE, "two counter samples of the flood port after the drain")
        result["tc_before_late"] = sample_action(FLOOD_PORT)
        sh("ip", "netns", "exec", NS, sys.executable, "-m", "tests.vm.frames", FLOOD_PEER, str(TAG_LATE), str(LATE))
        wait_for(lambda: collector.seen("v4", TAG_LATE) >= set(range(LATE)), TRAFFIC_DEADLINE, "the late samples")
        result["final"] = sample_action(FLOOD_PORT)
        result["healthy_final"] = sample_action(HEALTHY_PORT)
        result["drops_final"] = psample_drops(pid)
        result["status_final"] = status()
    finally:
        if trickle is not None:
            trickle.kill()
        result["exit"] = agent.stop()
        result["log"] = agent.log_path.read_text()
        result["datagrams"] = collector.stop()["v4"]
        result["elapsed_s"] = time.monotonic() - started


SCENARIOS = [scenario_backoff]


if __name__ == "__main__":
    print(flood(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])), flush=True)
