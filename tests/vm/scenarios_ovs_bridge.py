"""Guest side of the `bridge:` scenario: a rule `bridge: br0` on the real Open vSwitch (tests/vm/ovs.py,
hw-offload on), whose ports are added and deleted with ovs-vsctl while the agent runs.

What must hold (tests/vm/test_vm_ovs_bridge.py judges out["ovs_bridge"]): at
READY=1 hwsflow's filter is on br0's veth ports and on none of its internal
ports (br0 itself, obint); a veth port added with ovs-vsctl gets one, a port
deleted from the bridge loses it (the veth stays); status shows the
Interface's external_ids; Open vSwitch's own sFlow on br0 is one WARNING and
its removal one INFO; a VXLAN port's datapath device (vxlan_sys_4789) is not
sampled until a reload adds `tunnels: true` to the rule.  Times are polled
every 50 ms.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.vm.guest import REPO, TRAFFIC_DEADLINE, AgentProcess, agent_config, sh, wait_for
from tests.vm.scenarios_operations import ours

NS = "hvob"
BRIDGE = "br0"
VETHS = {"obv0": "obv0x", "obv1": "obv1x", "obv2": "obv2x"}  # in the root namespace: their peers in NS
INTERNAL = "obint"
IDS = {"iface-id": "lp-obv0", "attached-mac": "52:54:00:0b:00:00", "vm-uuid": "vm-obv0"}
SOCKET = "/run/hwsflow-ovsb/control.sock"
SFLOW_WARNING = f"bridge {BRIDGE} runs Open vSwitch's own sFlow"
SFLOW_OFF = f"bridge {BRIDGE}: Open vSwitch's own sFlow is off now"
TUNNEL = "obvx"


def cli(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "hwsflow", *args, "--socket", SOCKET], cwd=REPO,
                          capture_output=True, text=True, timeout=TRAFFIC_DEADLINE)
    return {"exit": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def sampled(ports: list[str]) -> dict[str, bool]:
    return {port: bool(ours(port)) for port in ports}


def setup() -> None:
    sh("ip", "netns", "add", NS)
    for port, peer in VETHS.items():
        sh("ip", "link", "add", port, "type", "veth", "peer", "name", peer, "netns", NS)
        sh("ip", "link", "set", port, "up")


def teardown() -> None:
    for port in VETHS:
        sh("ip", "link", "del", port, check=False)
    sh("ip", "netns", "del", NS, check=False)


def scenario_ovs_bridge(rwdir: Path, out: dict) -> None:
    from tests.vm import ovs

    result = out["ovs_bridge"] = {}
    started = time.monotonic()
    all_ports = [*VETHS, INTERNAL, BRIDGE]
    try:
        setup()
        result["ovs_start_s"] = ovs.start({"hw-offload": "true"})
        ovs.vsctl("add-br", BRIDGE)
        ovs.vsctl("add-port", BRIDGE, "obv0", "--", "set", "interface", "obv0",
                  *(f"external_ids:{key}={value}" for key, value in IDS.items()))
        ovs.vsctl("add-port", BRIDGE, "obv1")
        ovs.vsctl("add-port", BRIDGE, INTERNAL, "--", "set", "interface", INTERNAL, "type=internal")
        wait_for(lambda: Path(f"/sys/class/net/{INTERNAL}").exists(), TRAFFIC_DEADLINE, "the internal port")
        config = agent_config(f"  - bridge: {BRIDGE}\n") + f"control_socket: {SOCKET}\n"
        tunnels_config = config.replace(f"  - bridge: {BRIDGE}\n", f"  - bridge: {BRIDGE}\n    tunnels: true\n")
        agent = AgentProcess(rwdir, "ovs_bridge", config)
        try:
            result["ready_s"] = agent.wait_ready()
            result["at_ready"] = sampled(all_ports)
            # Open vSwitch may still be setting a port up (it re-creates the ingress qdisc): hwsflow heals
            result["settled_s"] = wait_for(lambda: all(sampled(["obv0", "obv1"]).values()), TRAFFIC_DEADLINE,
                                           "filters on obv0 and obv1")
            result["settled"] = sampled(all_ports)
            added = time.monotonic()
            ovs.vsctl("add-port", BRIDGE, "obv2")
            result["add_port_s"] = wait_for(lambda: ours("obv2"), TRAFFIC_DEADLINE, "a filter on obv2")
            result["add_port_total_s"] = time.monotonic() - added
            ovs.vsctl("del-port", BRIDGE, "obv1")
            result["del_port_s"] = wait_for(lambda: not ours("obv1"), TRAFFIC_DEADLINE, "obv1's filter removed")
            result["after_changes"] = sampled(all_ports)
            result["status_json"] = cli("status", "--json")
            result["status_text"] = cli("status")
            ovs.vsctl("--", "--id=@s", "create", "sflow", "agent=lo", 'targets="127.0.0.1:6399"', "sampling=64",
                      "--", "set", "bridge", BRIDGE, "sflow=@s")
            result["sflow_warned_s"] = wait_for(lambda: SFLOW_WARNING in agent.log_path.read_text(),
                                                TRAFFIC_DEADLINE, "the warning about Open vSwitch's sFlow")
            result["status_sflow"] = cli("status")
            ovs.vsctl("clear", "bridge", BRIDGE, "sflow")
            result["sflow_off_s"] = wait_for(lambda: SFLOW_OFF in agent.log_path.read_text(), TRAFFIC_DEADLINE,
                                             "Open vSwitch's sFlow said to be off")
            # a tunnel port: its datapath device is br0's, sampled only once the rule asks for tunnels
            device = result["tunnel_device"] = ovs.add_tunnel_port(BRIDGE, TUNNEL, "vxlan", remote_ip="192.0.2.99")
            ovs.vsctl("add-port", BRIDGE, "obv1")  # once its filter is back, the agent has seen the device too
            wait_for(lambda: ours("obv1"), TRAFFIC_DEADLINE, "obv1's filter back")
            result["tunnel_without_tunnels"] = bool(ours(device))
            agent.config_path.write_text(tunnels_config)
            reloaded = time.monotonic()
            agent.proc.send_signal(signal.SIGHUP)
            agent.wait_notify("READY=1")
            wait_for(lambda: ours(device), TRAFFIC_DEADLINE, f"a filter on {device}")
            result["tunnel_reload_s"] = time.monotonic() - reloaded
            result["status_tunnel"] = cli("status", "--json")
            result["vsctl_show"] = ovs.vsctl("show")
        finally:
            result["exit"] = agent.stop()
            result["log"] = agent.log_path.read_text()
        result["after_stop"] = sampled([port for port in [*all_ports, result.get("tunnel_device", "")]
                                        if port and Path(f"/sys/class/net/{port}").exists()])
    finally:
        try:
            result["ovs_stop"] = ovs.stop()
        finally:
            teardown()
            result["elapsed_s"] = time.monotonic() - started


SCENARIOS = [scenario_ovs_bridge]


if __name__ == "__main__":  # a development run in the guest: python -m tests.vm.scenarios_ovs_bridge DIR
    found: dict = {}
    scenario_ovs_bridge(Path(sys.argv[1]), found)
    print(json.dumps(found, indent=1))
