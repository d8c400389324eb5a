"""Guest side of the VM tests: run every kernel scenario in one boot and record what happened.

    python tests/vm/scenarios.py RWDIR [MODULE...]

It only does what needs the real kernel: ports in namespaces, foreign filters,
traffic, the real `hwsflow run`, and capture at collectors.  It writes
RWDIR/results.json; the host-side tests (tests/vm/test_vm_*.py) decode and
judge it.  Every wait polls a condition against a generous deadline: under
software emulation the guest is many times slower than the host.

Scenario modules (this one, scenarios_*.py) each export SCENARIOS, a list of
functions (rwdir, out) run in order; a failure is recorded and the next runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.vm import frames  # noqa: E402 - after the sys.path insert that lets the guest import tests.vm
from tests.vm.guest import (  # noqa: E402 - as above
    PORTS, TRAFFIC_DEADLINE, AgentProcess, Collector, agent_config, ifindex, send_from_namespace, setup_ports,
    sh, tc_json, wait_for,
)

TAG_HSP0, TAG_HSP1_IN, TAG_HSP1_OUT, TAG_HSP1_LATE, TAG_BARRIER = 0, 1, 2, 3, 9
LATE_FRAMES = 40  # into hsp1 after its pool was re-synced from tc
POLLING = 2  # s, counter polling interval of the pipeline scenario
COUNTS = {TAG_HSP0: 200, TAG_HSP1_IN: 400, TAG_HSP1_OUT: 400}


def wait_counters_after(collector: Collector, out: dict, key: str) -> None:
    """Wait for a counter sample of hsp0 and hsp1 in datagrams that arrive from now on."""
    start = collector.count("v4")
    out[key] = wait_for(
        lambda: all(collector.has_after("v4", start, b"\0\0\0\x04" + p.encode()) for p in ("hsp0", "hsp1")),
        TRAFFIC_DEADLINE, "counter samples after the traffic")


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


SCENARIOS = [scenario_pipeline, scenario_refusals, scenario_config_error]
MODULES = ("tests.vm.scenarios_accounting", "tests.vm.scenarios_operations", "tests.vm.scenarios_faults",
           "tests.vm.scenarios_metrics", "tests.vm.scenarios_tunnels", "tests.vm.scenarios_ovs_bridge",
           "tests.vm.scenarios_ovs", "tests.vm.scenarios_backoff")


def all_scenarios(only: list[str]) -> list:
    """This module's scenarios, then each scenario module's, in a fixed order.

    `only` (module names such as "scenarios_operations") narrows a development run; empty means all.
    """
    import importlib

    found = list(SCENARIOS) if not only or "scenarios" in only else []
    for name in MODULES:
        if only and name.rsplit(".", 1)[1] not in only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # not written yet
        found += module.SCENARIOS
    return found


def main(rwdir: Path, only: list[str]) -> int:
    out: dict = {"kernel": os.uname().release, "errors": []}
    t0 = time.monotonic()
    try:
        setup_ports()
        out["ifindex"] = {name: ifindex(name) for name in PORTS}
        out["counts"] = {str(k): v for k, v in COUNTS.items()}
        for scenario in all_scenarios(only):
            try:
                scenario(rwdir, out)
            except Exception as err:  # noqa: BLE001 - record and go on: one boot serves every scenario
                out["errors"].append(f"{scenario.__name__}: {type(err).__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - recorded: the host-side tests report it
        out["errors"].append(f"setup: {type(err).__name__}: {err}")
    out["guest_s"] = time.monotonic() - t0
    (rwdir / "results.json").write_text(json.dumps(out, indent=1))
    return 0 if not out["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), sys.argv[2:]))
