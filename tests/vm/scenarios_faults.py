"""Guest side of the fault matrix (issue 5): each fault is done to a running agent while a healthy port
carries a steady trickle of frames, all of which must come out sampled.

Recorded under out["faults"], judged by tests/vm/test_vm_faults.py.  Every port is sampled 1-in-1, so
"no sample lost that could have been kept" is exact: each frame sent is either in a datagram or, where
the fault overflows the agent's socket, counted in the drops of its own port.  Times are from the fault
to the condition, found by polling (50 ms).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.vm.guest import NS, REPO, TRAFFIC_DEADLINE, AgentProcess, Collector, add_veth, sh, tc_json, wait_for
from tests.vm.scenarios_operations import ours, qdisc_kinds, send

HEALTHY, VICTIM = "flt0", "flt1"
PEERS = {HEALTHY: "flt0x", VICTIM: "flt1x"}
GHOST, FLAP = "ghost0", "flap0"
RUN_DIR = Path("/run/hwsflow-faults")  # a small tmpfs of its own: it is filled in the disk-full case
LOG_DIR = Path("/run/hwsflow-faults-log")  # ditto, for the agent's stderr
SOCKET = RUN_DIR / "control.sock"
TRICKLE_INTERVAL = 0.05  # s between the healthy port's frames
CHECK_FRAMES = 20  # frames through a port to show it is sampled again
BURST = 3000  # frames while the agent is stopped: far beyond what its 64 KiB socket holds
DEADLINE = 120.0
# tags: one per case for the healthy trickle, others for the frames through the port at fault
TAG = {"collectors": 40, "flap": 41, "qdisc": 42, "reload": 43, "disk": 44, "restart": 45, "policer": 46,
       "policer_check": 59, "ghost": 50, "flap_check": 51, "qdisc_check": 52, "burst": 53, "burst_check": 54, "burst_healthy": 55,
       "disk_check": 56, "restart_check": 57, "healthy_check": 58}


def _config(ports: str) -> str:
    return (
        "agent: 192.0.2.1\n"
        # a working collector, one that answers ICMP port unreachable, one whose name does not resolve
        "targets: ['127.0.0.1:16343', '127.0.0.1:9', 'collector.invalid:6343']\n"
        "sampling: 1\nheader: 64\npolling: 0\ngroup_base: 3300\n"
        "rcvbuf: 65536\n"  # the smallest allowed: the burst case must overflow it
        f"control_socket: {SOCKET}\n"
        f"ports:\n{ports}"
    )


MAIN_CONFIG = _config(f"  - name: {HEALTHY}\n  - name: {VICTIM}\n  - match: 'flap*'\n")


def status() -> dict:
    from hwsflow.core.control import Status
    from hwsflow.linux.control_socket import request

    reply = request(str(SOCKET), Status(), timeout=DEADLINE)
    if not reply.get("ok"):
        raise RuntimeError(f"status refused: {reply}")
    return reply["status"]


def port_row(name: str) -> dict:
    return next(p for p in status()["ports"] if p["port"] == name)


class Trickle:
    """Frames through the healthy port, one every TRICKLE_INTERVAL, from start() until stop()."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", NS, sys.executable, "-m", "tests.vm.frames", PEERS[HEALTHY], str(tag), "0", "0",
             str(TRICKLE_INTERVAL)], cwd=REPO, stdout=subprocess.PIPE, text=True)

    def started(self, collector: Collector) -> None:
        """Its first frame sampled: it has its SIGTERM handler by then, so stop() gets its count."""
        wait_for(lambda: collector.seen("v4", self.tag), DEADLINE, f"tag {self.tag}: the trickle's first sample")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=TRAFFIC_DEADLINE)
        if not out.strip():
            raise RuntimeError(f"the trickle (tag {self.tag}) ended without its count: exit {self.proc.returncode}")
        return int(out.strip())


def _all_seen(collector: Collector, tag: int, count: int, what: str) -> float:
    return wait_for(lambda: len(collector.seen("v4", tag)) >= count, DEADLINE, what)


def _case(collector: Collector, faults: dict, name: str, fault) -> None:
    """Run fault with the healthy trickle flowing; record what was sent and the recovery time."""
    trickle = Trickle(TAG[name])
    trickle.started(collector)
    try:
        faults[name] = {"recovery_s": fault()}
    finally:
        sent = trickle.stop()
    faults.setdefault(name, {})["healthy_sent"] = sent
    _all_seen(collector, TAG[name], sent, f"{name}: every frame of the healthy port")


def _check_port(collector: Collector, port: str, tag: int) -> None:
    send(PEERS.get(port, port + "x"), tag, CHECK_FRAMES)
    _all_seen(collector, tag, CHECK_FRAMES, f"{port}: every check frame")


def _tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path))


def _fill(path: Path) -> None:
    """No block and no inode left on the tmpfs at path."""
    with open(path / "fill", "wb", buffering=0) as f:  # unbuffered: no flush to fail at close
        try:
            while True:
                f.write(bytes(1 << 16))
        except OSError:
            pass
    for i in range(100000):
        try:
            (path / f"inode{i}").touch()
        except OSError:
            return


def scenario_faults(rwdir: Path, out: dict) -> None:
    faults: dict = {}
    out["faults"] = faults
    t0 = time.monotonic()
    for port, peer in PEERS.items():
        add_veth(port, peer)
    _tmpfs(RUN_DIR, "size=1m,nr_inodes=64,mode=0700")
    _tmpfs(LOG_DIR, "size=1m,nr_inodes=64")
    collector = Collector()
    try:
        _psample_late_and_missing_port(rwdir, collector, faults)
        _main_agent(rwdir, collector, faults)
    finally:
        faults["datagrams"] = collector.stop()["v4"]
        faults["elapsed_s"] = time.monotonic() - t0
        for path in (RUN_DIR, LOG_DIR):
            sh("umount", str(path), check=False)


def _psample_late_and_missing_port(rwdir: Path, collector: Collector, faults: dict) -> None:
    """The agent starts for a port that does not exist yet, and with the psample module not loaded."""
    case: dict = {}
    faults["psample_late"] = case
    sh("modprobe", "-r", "act_sample", "psample", check=False)
    case["psample_loaded_before"] = _module_loaded("psample")
    agent = AgentProcess(rwdir, "faults-late", _config(f"  - name: {GHOST}\n"))
    try:
        case["ready_s"] = agent.wait_ready()
        case["psample_before"] = status()["agent"]["psample"]
        case["psample_loaded_at_ready"] = _module_loaded("psample")
        start = time.monotonic()
        add_veth(GHOST, GHOST + "x")
        wait_for(lambda: ours(GHOST), DEADLINE, "the ghost port's filter")
        case["filter_s"] = time.monotonic() - start
        wait_for(lambda: status()["agent"]["psample"] == "joined", DEADLINE, "psample joined")
        case["recovery_s"] = time.monotonic() - start
        _check_port(collector, GHOST, TAG["ghost"])
        case["ghost_row"] = port_row(GHOST)
    finally:
        case["exit"] = agent.stop()
        case["log"] = agent.log_path.read_text()
    sh("ip", "link", "del", GHOST)


def _module_loaded(name: str) -> bool:
    return any(line.split()[0] == name for line in Path("/proc/modules").read_text().splitlines())


def _two_at_once(rwdir: Path, faults: dict) -> AgentProcess:
    """Two agents started together: one runs, the other refuses with a clear error."""
    first = AgentProcess(rwdir, "faults-a", MAIN_CONFIG, LOG_DIR / "faults-a.log")
    second = AgentProcess(rwdir, "faults-b", MAIN_CONFIG, LOG_DIR / "faults-b.log")
    agents = [first, second]
    wait_for(lambda: any(a.proc.poll() is not None for a in agents), DEADLINE, "one of two agents to give up")
    loser = next(a for a in agents if a.proc.poll() is not None)
    winner = second if loser is first else first
    loser.log.close()
    loser.notify.close()
    faults["two_at_once"] = {"exit": loser.proc.returncode, "log": loser.log_path.read_text(),
                             "ready_s": winner.wait_ready()}
    return winner


def _main_agent(rwdir: Path, collector: Collector, faults: dict) -> None:
    agent = _two_at_once(rwdir, faults)
    restarted: AgentProcess | None = None
    try:
        _case(collector, faults, "collectors", lambda: _collectors(faults))
        _case(collector, faults, "flap", lambda: _flap(collector))
        _case(collector, faults, "qdisc", lambda: _qdisc_replaced(collector, faults))
        _case(collector, faults, "policer", lambda: _policer(agent, collector, faults))
        _case(collector, faults, "reload", lambda: _bad_reload(agent, faults))
        _burst(agent, collector, faults)
        faults["log_before_disk_full"] = agent.log_path.read_text()
        _case(collector, faults, "disk", lambda: _disk_full(collector, faults))
        restarted = _kill_and_restart(agent, rwdir, collector, faults)
    finally:
        if restarted is None:
            faults["main_exit"] = agent.stop()
        else:
            faults["restart_exit"] = restarted.stop()
        faults["main_log"] = agent.log_path.read_text()  # the last agent's (they share the file)
        faults["after_stop"] = {port: ours(port) for port in (HEALTHY, VICTIM, FLAP)}


def _collectors(faults: dict) -> float:
    """The unreachable and the unresolvable collectors are in the config from the start: status tells."""
    wait_for(lambda: any(c["errors"] for c in status()["collectors"]), DEADLINE, "a refused send counted")
    faults["collectors_status"] = status()["collectors"]
    return 0.0


def _flap(collector: Collector) -> float:
    """A port deleted and re-created (a VF reset, a port re-added by Open vSwitch)."""
    add_veth(FLAP, FLAP + "x")
    wait_for(lambda: ours(FLAP), DEADLINE, "the flapping port's filter")
    sh("ip", "link", "del", FLAP)
    start = time.monotonic()
    add_veth(FLAP, FLAP + "x")
    wait_for(lambda: ours(FLAP), DEADLINE, "the re-created port's filter")
    recovery = time.monotonic() - start
    _check_port(collector, FLAP, TAG["flap_check"])
    return recovery


def _qdisc_replaced(collector: Collector, faults: dict) -> float:
    """Another program swaps hwsflow's clsact for its own ingress qdisc and a filter of its own."""
    start = time.monotonic()
    # one tc process, as a program doing it over netlink would: no pause between the steps
    batch = (f"qdisc del dev {VICTIM} clsact\nqdisc add dev {VICTIM} ingress\n"
             f"filter add dev {VICTIM} ingress prio 10 protocol all matchall action gact pass\n")
    proc = subprocess.run(["tc", "-batch", "-"], input=batch, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tc -batch: {proc.stderr.strip()}")
    wait_for(lambda: ours(VICTIM), DEADLINE, "the victim's filter back")
    recovery = time.monotonic() - start
    faults["qdisc_after"] = qdisc_kinds(VICTIM)
    faults["foreign_after"] = [f.get("pref") for f in _filters(VICTIM) if f.get("pref") == 10 and "options" in f]
    _check_port(collector, VICTIM, TAG["qdisc_check"])
    return recovery


# what Open vSwitch does with hw-offload when `ingress_policing_rate` is set: the matchall at priority 1,
# whoever's it is, deleted, and its matchall + police put there (REFERENCE section 4), in one go
POLICER_ON = (f"filter del dev {VICTIM} ingress prio 1\n"
              f"filter add dev {VICTIM} ingress prio 1 handle 1 protocol all matchall action police rate 100mbit "
              "burst 100k conform-exceed drop/pipe\n")
POLICER_OFF = f"filter del dev {VICTIM} ingress prio 1\n"
REPLACEMENTS = 2  # the policer re-applied (a new rate): a filter deletion at hwsflow's priority each time


def _tc_batch(batch: str) -> None:
    proc = subprocess.run(["tc", "-batch", "-"], input=batch, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tc -batch: {proc.stderr.strip()}")


def _policers(port: str) -> list[int]:
    return [f["pref"] for f in _filters(port) if f.get("kind") == "matchall" and "options" in f
            and any(a.get("kind") == "police" for a in f["options"].get("actions", []))]


def _policer(agent: AgentProcess, collector: Collector, faults: dict) -> float:
    """Another program takes hwsflow's priority (OVS's policer): status says failed and why, the log says it
    once, hwsflow leaves the policer alone, and samples again by itself once the priority is free."""
    case: dict = {}
    faults["policer_case"] = case
    log_start = len(agent.log_path.read_text())
    start = time.monotonic()
    _tc_batch(POLICER_ON)
    wait_for(lambda: port_row(VICTIM)["offload"] == "failed", DEADLINE, "the policed port shown failed")
    case["failed_s"] = time.monotonic() - start
    case["row_blocked"] = port_row(VICTIM)
    wait_for(lambda: "police" in agent.log_path.read_text()[log_start:], DEADLINE, "the policer named in the log")
    for _ in range(REPLACEMENTS):
        _tc_batch(POLICER_ON)
    # the replacements' heals, and the slow poll (core.heal.BLOCKED_POLL, 5 s) behind them, find the policer
    # still there: time for them to run, so that the log shows they added nothing
    wait_for(lambda: time.monotonic() - start > 7.0, DEADLINE, "the heals of a blocked port")
    case["ours_blocked"] = ours(VICTIM)
    case["policers_blocked"] = _policers(VICTIM)
    case["row_still_blocked"] = port_row(VICTIM)
    freed = time.monotonic()
    _tc_batch(POLICER_OFF)
    wait_for(lambda: ours(VICTIM), DEADLINE, "the filter back once the priority is free")
    recovery = time.monotonic() - freed
    wait_for(lambda: port_row(VICTIM)["offload"] != "failed", DEADLINE, "status no longer failed")
    case["row_after"] = port_row(VICTIM)
    case["log"] = agent.log_path.read_text()[log_start:]
    _check_port(collector, VICTIM, TAG["policer_check"])
    return recovery


def _filters(port: str) -> list[dict]:
    return list(tc_json("filter", "show", "dev", port, "ingress"))


def _bad_reload(agent: AgentProcess, faults: dict) -> float:
    good = agent.config_path.read_text()
    agent.config_path.write_text(good.replace("sampling: 1", "sampling: -3"))
    start = time.monotonic()
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_notify("READY=1")
    recovery = time.monotonic() - start
    faults["after_bad_reload"] = {p["port"]: p["rate"] for p in status()["ports"]}
    agent.config_path.write_text(good)
    return recovery


def _burst(agent: AgentProcess, collector: Collector, faults: dict) -> None:
    """The agent stopped while frames pour in: its socket overflows; afterwards every sample
    is either delivered or counted as a drop on its own port, and sampling goes on by itself."""
    case: dict = {}
    faults["burst"] = case
    before = {port: port_row(port)["drops"] for port in (HEALTHY, VICTIM)}
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        send(PEERS[VICTIM], TAG["burst"], BURST)
        send(PEERS[HEALTHY], TAG["burst_healthy"], 1)  # queued, or lost and counted: either way accounted
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    start = time.monotonic()
    send(PEERS[VICTIM], TAG["burst_check"], CHECK_FRAMES)
    _all_seen(collector, TAG["burst_check"], CHECK_FRAMES, "the victim sampled again after the burst")
    case["recovery_s"] = time.monotonic() - start
    _check_port(collector, HEALTHY, TAG["healthy_check"])
    after = status()
    rows = {p["port"]: p for p in after["ports"]}
    case["drops"] = {port: rows[port]["drops"] - before[port] for port in before}
    case["delivered"] = {VICTIM: len(collector.seen("v4", TAG["burst"])),
                         HEALTHY: len(collector.seen("v4", TAG["burst_healthy"]))}
    case["sent"] = {VICTIM: BURST, HEALTHY: 1}
    case["overruns"] = {"enobufs": after["agent"]["enobufs"], "kernel_drops": after["agent"]["kernel_drops"]}


def _disk_full(collector: Collector, faults: dict) -> float:
    """/run (control socket, lock) and the log's file system full while the agent must log a heal."""
    _fill(RUN_DIR)
    _fill(LOG_DIR)
    pref = ours(VICTIM)[0]["pref"]
    start = time.monotonic()
    sh("tc", "filter", "del", "dev", VICTIM, "ingress", "pref", str(pref))  # a warning it cannot write
    wait_for(lambda: ours(VICTIM), DEADLINE, "the victim's filter back on a full disk")
    recovery = time.monotonic() - start
    faults["disk_status_ok"] = bool(status()["ports"])  # the control socket still answers
    _check_port(collector, VICTIM, TAG["disk_check"])
    return recovery


def _kill_and_restart(agent: AgentProcess, rwdir: Path, collector: Collector, faults: dict) -> AgentProcess:
    """SIGKILL, then a new agent on the still-full disks: it adopts the filters and samples on."""
    case: dict = {"before": {port: ours(port) for port in (HEALTHY, VICTIM, FLAP)}}
    faults["restart"] = case
    agent.kill()
    # a new log file would need an inode: the new agent writes to the old agent's (full) log
    restarted = AgentProcess(rwdir, "faults-again", agent.config_path.read_text(), agent.log_path)
    case["ready_s"] = restarted.wait_ready()
    trickle = Trickle(TAG["restart"])
    try:
        trickle.started(collector)
        _check_port(collector, VICTIM, TAG["restart_check"])
    finally:
        sent = trickle.stop()
    _all_seen(collector, TAG["restart"], sent, "every healthy frame after the restart")
    case.update(healthy_sent=sent, recovery_s=case["ready_s"],
                after={port: ours(port) for port in (HEALTHY, VICTIM, FLAP)},
                drops={port: port_row(port)["drops"] for port in (HEALTHY, VICTIM)})
    return restarted


SCENARIOS = [scenario_faults]
