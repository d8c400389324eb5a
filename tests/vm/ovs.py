"""The real Open vSwitch in the test VM (Debian's openvswitch-switch, installed by tools/setup-test-env).

Guest side, stdlib only.  start() brings up ovsdb-server, sets the options
(hw-offload on by default, as on an offloading host) and only then starts
ovs-vswitchd, so no restart is needed for them to take effect (REFERENCE
section 4).  stop() removes every bridge, stops both daemons and deletes the
kernel datapath, and says what is left, so that later scenarios in the same
boot find the kernel as it was (no ovs-system, no vxlan_sys_4789 holding UDP
4789).  The guest's /etc, /var and /run are throwaway overlays: the database and
the logs vanish with the VM.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.vm.guest import sh, wait_for

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
LOG = Path("/var/log/openvswitch/ovs-vswitchd.log")
START_DEADLINE = 240.0  # s: under software emulation the daemons take a while


def vsctl(*argv: str) -> str:
    return sh("ovs-vsctl", "--timeout=120", *argv)


def start(other_config: dict[str, str] | None = None) -> float:
    """Start Open vSwitch with these other_config settings (default hw-offload=true); seconds it took."""
    started = time.monotonic()
    sh(OVS_CTL, "start", "--no-ovs-vswitchd", "--system-id=random", "--delete-bridges")
    for key, value in (other_config if other_config is not None else {"hw-offload": "true"}).items():
        vsctl("--no-wait", "set", "Open_vSwitch", ".", f"other_config:{key}={value}")  # no ovs-vswitchd yet
    sh(OVS_CTL, "start", "--no-ovsdb-server", "--system-id=random", "--no-mlockall")
    wait_for(lambda: "ovs-vswitchd" in sh(OVS_CTL, "status", check=False), START_DEADLINE, "ovs-vswitchd to run")
    return time.monotonic() - started


def add_tunnel_port(bridge: str, port: str, kind: str, **options: str) -> str:
    """A bridge (if new) and a tunnel port on it; returns the kernel device Open vSwitch made for it
    (vxlan_sys_4789 for VXLAN on its default port), once it exists."""
    vsctl("--may-exist", "add-br", bridge)
    vsctl("add-port", bridge, port, "--", "set", "interface", port, f"type={kind}",
          *(f"options:{k}={v}" for k, v in options.items()))
    device = {"vxlan": "vxlan_sys_4789", "geneve": "genev_sys_6081"}[kind]
    wait_for(lambda: Path(f"/sys/class/net/{device}").exists(), START_DEADLINE, f"Open vSwitch to create {device}")
    return device


def stop() -> dict:
    """Remove the bridges, stop the daemons, delete the datapath; returns what was done and what is left."""
    found: dict = {"bridges": sh("ovs-vsctl", "--timeout=60", "list-br", check=False).split()}
    for bridge in found["bridges"]:
        sh("ovs-vsctl", "--timeout=60", "del-br", bridge, check=False)
    found["log_errors"] = [line for line in (LOG.read_text(errors="replace") if LOG.exists() else "").splitlines()
                           if "|ERR|" in line or "|EMER|" in line]
    sh(OVS_CTL, "stop", check=False)
    for datapath in sh("ovs-dpctl", "dump-dps", check=False).split():
        sh("ovs-dpctl", "del-dp", datapath, check=False)
    found["left"] = [name for name in ("ovs-system", "vxlan_sys_4789", "genev_sys_6081")
                     if Path(f"/sys/class/net/{name}").exists()]
    found["daemons"] = [line for name in ("ovs-vswitchd", "ovsdb-server")
                        for line in sh("pgrep", "-a", "-x", name, check=False).splitlines()]
    return found
