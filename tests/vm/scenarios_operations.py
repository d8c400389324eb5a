"""Guest side of the operations scenarios (issue 6): the CLI, reloads, port discovery, self-healing,
kill -9 and restart, and the control socket refusing non-root users.

Everything is recorded under out["ops"]; tests/vm/test_vm_operations.py judges it.  Times are
measured with time.monotonic() by polling tc, so they include the poll interval (50 ms).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.vm import demo_guest
from tests.vm.guest import (
    NS, REPO, TRAFFIC_DEADLINE, AgentProcess, Collector, add_veth, agent_config, ifindex, sh, tc_json, wait_for,
)

PORTS = {"hop0": "hop0x", "hop1": "hop1x", "hop2": "hop2x"}
NEW_PORT, NEW_PEER = "hopn0", "hopn0x"
TAG_STEADY, TAG_NEW, TAG_BACK, TAG_BARRIER, TAG_AFTER_HEAL = 20, 21, 22, 29, 23
STEADY_FRAMES = 600  # through hop0 while hop1's rate is reloaded
NEW_FRAMES = 20
SOCKET = "/run/hwsflow-ops/control.sock"
HEAL_DEADLINE = 60.0


def _config(hop1_sampling: int) -> str:
    return agent_config(
        "  - name: hop0\n"
        f"  - name: hop1\n    sampling: {hop1_sampling}\n"
        "  - match: 'hopn*'\n",
        polling=0,
    ) + f"control_socket: {SOCKET}\n"


def cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "hwsflow", *args, "--socket", SOCKET], cwd=REPO,
                          capture_output=True, text=True, timeout=TRAFFIC_DEADLINE)
    return {"exit": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def ours(port: str, direction: str = "ingress") -> list[dict]:
    """hwsflow's filters on a port, as `tc -s -j` shows them."""
    found = []
    for flt in tc_json("filter", "show", "dev", port, direction):
        for action in flt.get("options", {}).get("actions", []):
            if action.get("kind") == "sample" and action.get("cookie", "").startswith(b"hwsflow\x01".hex()):
                found.append({"pref": flt["pref"], "rate": action["rate"], "group": action["group"],
                              "index": action["index"], "packets": action["stats"]["packets"]})
    return found


def qdisc_kinds(port: str) -> list[str]:
    return [q["kind"] for q in tc_json("qdisc", "show", "dev", port) if q["kind"] in ("ingress", "clsact")]


def send_background(peer: str, tag: int, count: int, first: int = 0) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-m", "tests.vm.frames", peer, str(tag),
                             str(count), str(first)], cwd=REPO)


def send(peer: str, tag: int, count: int, first: int = 0) -> None:
    proc = send_background(peer, tag, count, first)
    if proc.wait(TRAFFIC_DEADLINE) != 0:
        raise RuntimeError(f"sending through {peer} failed")


def barrier(collector: Collector, index: int) -> None:
    """A frame through hop0 (sampled 1-in-1): once it is in, everything sampled before it is too."""
    send("hop0x", TAG_BARRIER, 1, index)
    wait_for(lambda: index in collector.seen("v4", TAG_BARRIER), TRAFFIC_DEADLINE, f"barrier {index}")


def as_nobody_status() -> str:
    """The control socket as uid 65534 would use it, from a forked child (nothing to exec)."""
    from hwsflow.core.control import Status
    from hwsflow.linux.control_socket import request

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, json.dumps(request(SOCKET, Status())).encode())
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            os.write(write_end, f"{type(err).__name__}: {err}".encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


def timed(condition, what: str) -> float:
    return wait_for(condition, HEAL_DEADLINE, what)


def scenario_operations(rwdir: Path, out: dict) -> None:
    ops: dict = {}
    out["ops"] = ops
    t0 = time.monotonic()
    for port, peer in PORTS.items():
        add_veth(port, peer)
    sh("tc", "qdisc", "add", "dev", "hop1", "ingress")  # hop1 is managed like an Open vSwitch port
    ops["ifindex"] = {port: ifindex(port) for port in PORTS}
    collector = Collector()
    agent = AgentProcess(rwdir, "ops", _config(hop1_sampling=1))
    try:
        ops["ready_s"] = agent.wait_ready()
        _cli_enable_status_disable(ops)
        _reload(agent, collector, ops, rwdir)
        _port_added_and_removed(collector, ops)
        _qdisc_deleted(collector, ops)
        ops["nobody"] = as_nobody_status()
        _kill_and_restart(agent, rwdir, ops)
    finally:
        ops["log"] = agent.log_path.read_text()
        ops["datagrams"] = collector.stop()["v4"]
        ops["elapsed_s"] = time.monotonic() - t0


def _cli_enable_status_disable(ops: dict) -> None:
    ops["enable"] = cli("enable", "hop2", "--rate", "7", "--direction", "both")
    ops["enable_tc"] = {"ingress": ours("hop2"), "egress": ours("hop2", "egress")}
    ops["status_json"] = cli("status", "--json")
    ops["status_text"] = cli("status")
    ops["disable"] = cli("disable", "hop2")
    ops["disable_tc"] = {"ingress": ours("hop2"), "egress": ours("hop2", "egress"), "qdisc": qdisc_kinds("hop2")}
    ops["disable_again"] = cli("disable", "hop2")
    ops["enable_missing"] = cli("enable", "nosuchport9", "--rate", "3")


def _reload(agent: AgentProcess, collector: Collector, ops: dict, rwdir: Path) -> None:
    """hop1's rate changes while frames flow through hop0, whose filter must stay untouched."""
    ops["hop0_before_reload"] = ours("hop0")
    sender = send_background("hop0x", TAG_STEADY, STEADY_FRAMES)
    wait_for(lambda: len(collector.seen("v4", TAG_STEADY)) > 0, TRAFFIC_DEADLINE, "the first steady frames")
    ops["steady_seen_at_reload"] = len(collector.seen("v4", TAG_STEADY))
    agent.config_path.write_text(_config(hop1_sampling=3))
    reload_start = time.monotonic()
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_notify("READY=1")
    ops["reload_s"] = time.monotonic() - reload_start
    ops["hop1_after_reload"] = ours("hop1")
    ops["steady_seen_after_reload"] = len(collector.seen("v4", TAG_STEADY))
    if sender.wait(TRAFFIC_DEADLINE) != 0:
        raise RuntimeError("the steady sender failed")
    barrier(collector, 0)
    ops["hop0_after_reload"] = ours("hop0")
    # an invalid file: logged, and the running config stays
    agent.config_path.write_text(_config(hop1_sampling=3).replace("sampling: 3", "sampling: 0"))
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_notify("READY=1")
    ops["hop1_after_bad_reload"] = ours("hop1")
    agent.config_path.write_text(_config(hop1_sampling=3))


def _port_appears(collector: Collector, ops: dict, name: str, tag: int) -> None:
    """Create the port, time until hwsflow's filter is on it, then see every frame sent through it sampled."""
    sh("ip", "link", "add", NEW_PORT, "type", "veth", "peer", "name", NEW_PEER, "netns", NS)
    ops[f"{name}_sampled_s"] = timed(lambda: ours(NEW_PORT), f"the {name.replace('_', ' ')}'s filter")
    ops[f"{name}_ifindex"] = ifindex(NEW_PORT)
    sh("sysctl", "-qw", f"net.ipv6.conf.{NEW_PORT}.disable_ipv6=1")
    sh("ip", "link", "set", NEW_PORT, "up")
    sh("ip", "netns", "exec", NS, "ip", "link", "set", NEW_PEER, "up")
    send(NEW_PEER, tag, NEW_FRAMES)
    wait_for(lambda: len(collector.seen("v4", tag)) == NEW_FRAMES, TRAFFIC_DEADLINE,
             f"the {name.replace('_', ' ')}'s samples")


def _port_added_and_removed(collector: Collector, ops: dict) -> None:
    _port_appears(collector, ops, "new_port", TAG_NEW)
    sh("ip", "link", "del", NEW_PORT)
    _port_appears(collector, ops, "returned_port", TAG_BACK)  # sampled again, under its new ifindex


def _qdisc_deleted(collector: Collector, ops: dict) -> None:
    """hop0's clsact (hwsflow's) deleted; hop1's ingress deleted and re-created as Open vSwitch does."""
    ops["hop0_qdisc_before"] = qdisc_kinds("hop0")
    sh("tc", "qdisc", "del", "dev", "hop0", "clsact")
    ops["hop0_heal_s"] = timed(lambda: ours("hop0"), "hop0's filter back")
    ops["hop0_qdisc_after"] = qdisc_kinds("hop0")
    # like Open vSwitch at port initialisation; tc under emulation can take longer than hwsflow's settle
    # time, and hwsflow must wait for the owner's qdisc instead of making a clsact that blocks it
    start = time.monotonic()
    sh("tc", "qdisc", "del", "dev", "hop1", "ingress")
    ops["hop1_gap_s"] = time.monotonic() - start
    sh("tc", "qdisc", "add", "dev", "hop1", "ingress")
    ops["hop1_heal_s"] = timed(lambda: ours("hop1"), "hop1's filter back")  # from the owner's new qdisc
    ops["hop1_qdisc_after"] = qdisc_kinds("hop1")
    send("hop0x", TAG_AFTER_HEAL, 10)
    wait_for(lambda: len(collector.seen("v4", TAG_AFTER_HEAL)) == 10, TRAFFIC_DEADLINE, "samples after the heal")


def _kill_and_restart(agent: AgentProcess, rwdir: Path, ops: dict) -> None:
    before = {port: ours(port) for port in ("hop0", "hop1", NEW_PORT)}
    agent.kill()
    ops["after_kill"] = {port: ours(port) for port in ("hop0", "hop1", NEW_PORT)}  # left in place
    restarted = AgentProcess(rwdir, "ops-restart", _config(hop1_sampling=3))
    try:
        ops["restart_ready_s"] = restarted.wait_ready()
        ops["after_restart"] = {port: ours(port) for port in ("hop0", "hop1", NEW_PORT)}
        ops["before_kill"] = before
    finally:
        ops["restart_exit"] = restarted.stop()
        ops["restart_log"] = restarted.log_path.read_text()
    ops["after_stop"] = {port: ours(port) + ours(port, "egress") for port in ("hop0", "hop1", NEW_PORT)}
    ops["qdisc_after_stop"] = {port: qdisc_kinds(port) for port in ("hop0", "hop1")}


def scenario_demo(rwdir: Path, out: dict) -> None:
    """`./dev demo` as a new user runs it: its guest side, here in the same boot as the other scenarios."""
    demo_dir = rwdir / "demo"
    demo_dir.mkdir()
    exit_status = demo_guest.main(demo_dir)
    out["demo"] = {"exit": exit_status, "log": (demo_dir / "demo.log").read_text(),
                   "decoded": (demo_dir / "decoded.txt").read_text()}


SCENARIOS = [scenario_operations, scenario_demo]
