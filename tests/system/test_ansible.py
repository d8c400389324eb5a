"""The example Ansible role (ansible/): syntax, and the config it renders going through check-config.

The playbooks really run, on localhost with a local connection, writing only under tmp_path:
Ansible's own `validate` step runs the venv's `hwsflow check-config` on each rendered file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hwsflow.core.config import load_config
from hwsflow.core.model import DEFAULT_OVSDB_SOCKET
from tests.helpers.paths import REPO

SITE = REPO / "ansible" / "site.yml"
UNIT = REPO / "systemd" / "hwsflow.service"
VENV_HWSFLOW = Path(sys.prefix) / "bin" / "hwsflow"


@pytest.fixture
def ansible(tmp_path: Path):
    """Run ansible-playbook with every file Ansible writes (temp files, its home) under tmp_path."""
    for name in ("home", "local_tmp", "remote_tmp"):
        (tmp_path / name).mkdir()
    empty_cfg = tmp_path / "ansible.cfg"
    empty_cfg.write_text("")  # no ansible.cfg of the machine or the working directory applies
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(empty_cfg),
        "ANSIBLE_HOME": str(tmp_path / "home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local_tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote_tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[sflow_agents]\nlocalhost\n")

    def run(*args: str, extra: dict | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["ansible-playbook", "-i", str(inventory), *args]
        if extra is not None:
            argv += ["-e", json.dumps(extra)]  # JSON keeps the types: 0 stays an integer
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    return run


def local_vars(tmp_path: Path, **more: object) -> dict:
    """site.yml's settings as they are, run here: the venv's hwsflow, files under tmp_path, no systemd."""
    return {
        "ansible_connection": "local",
        "ansible_become": False,
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "hwsflow_bin": str(VENV_HWSFLOW),
        "hwsflow_config": str(tmp_path / "etc" / "hwsflow" / "hwsflow.yaml"),
        "hwsflow_service": False,
        **more,
    }


def test_example_playbook_passes_syntax_check(ansible) -> None:
    result = ansible("--syntax-check", str(SITE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"playbook: {SITE}" in result.stdout


def test_rendered_config_passes_check_config_and_a_bad_variable_is_refused(ansible, tmp_path: Path) -> None:
    # "30" is what `-e hwsflow_polling=30` or a templated variable gives: a string
    ok = ansible("--tags", "config", str(SITE), extra=local_vars(tmp_path, hwsflow_polling="30"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    path = tmp_path / "etc" / "hwsflow" / "hwsflow.yaml"
    config = load_config(str(path))  # the same check the validate step ran, to read the values back
    assert [(t.host, t.port) for t in config.targets] == [("192.0.2.10", 6343), ("2001:db8::10", 6343)]
    assert (config.defaults.sampling, config.polling) == (400, 30)
    assert [(r.name, r.switch_id, r.port_name) for r in config.ports] == [
        ("enp4s0f0_1", None, None), (None, "00154d1234", "pf0vf*")]
    assert config.ports[0].settings.direction == "both" and config.ports[1].settings.sampling == 1000
    installed = path.read_bytes()

    bad = ansible("--tags", "config", str(SITE), extra=local_vars(tmp_path, hwsflow_sampling=0))
    assert bad.returncode != 0
    assert "failed to validate" in bad.stdout
    assert "sampling: must be from 1 to 4294967295, got 0" in bad.stdout, bad.stdout
    assert path.read_bytes() == installed, "a refused config must leave the installed one in place"

    # three mistakes at once: the validate step shows each, so one Ansible run is enough to fix them
    worse = ansible("--tags", "config", str(SITE), extra=local_vars(tmp_path, hwsflow_sampling=0, hwsflow_polling=-5,
                                                                     hwsflow_direction="sideways"))
    assert worse.returncode != 0 and "failed to validate" in worse.stdout
    for problem in ("sampling: must be from 1 to 4294967295, got 0", "polling: must be from 0 to 3600",
                    "direction: must be one of ingress, egress, both, got the string 'sideways'"):
        assert problem in worse.stdout, (problem, worse.stdout)
    assert path.read_bytes() == installed


def test_template_writes_every_optional_key_the_config_accepts(ansible, tmp_path: Path) -> None:
    """Optional keys and port rules pass through with the types the config requires."""
    extra = local_vars(
        tmp_path, hwsflow_agent="eno1", hwsflow_sub_agent_id=3, hwsflow_header="96", hwsflow_direction="both",
        hwsflow_offload="software", hwsflow_priority=2, hwsflow_chain=0, hwsflow_group_base=5000,
        hwsflow_datagram_size=1200, hwsflow_expanded="yes", hwsflow_rcvbuf=1048576, hwsflow_keep_filters=True,
        hwsflow_control_socket="/run/hwsflow/ctl.sock", hwsflow_metrics="[::1]:9465",
        hwsflow_ovsdb="/run/openvswitch/db.sock",
        hwsflow_ports=[{"switch_id": "0015401234", "port_name": "p0"}, {"name": "enp4s0f0_2", "group": "7"},
                       {"bridge": "br-int", "tunnels": "yes"}])
    result = ansible("--tags", "config", str(SITE), extra=extra)
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_config(str(tmp_path / "etc" / "hwsflow" / "hwsflow.yaml"))
    assert (config.agent, config.sub_agent_id, config.group_base, config.datagram_size) == ("eno1", 3, 5000, 1200)
    assert (config.expanded, config.rcvbuf, config.keep_filters) == (True, 1048576, True)
    assert config.control_socket == "/run/hwsflow/ctl.sock"
    assert config.metrics is not None and (config.metrics.host, config.metrics.port) == ("::1", 9465)
    assert (config.defaults.header, config.defaults.direction, config.defaults.offload) == (96, "both", "software")
    assert config.ports[0].switch_id == "0015401234", "a switch id of digits must stay a string"
    assert config.ports[1].group == 7
    assert (config.ovsdb, config.ports[2].bridge, config.ports[2].tunnels) == ("/run/openvswitch/db.sock", "br-int", True)


@pytest.mark.parametrize("off", [False, "no"])
def test_ovsdb_false_turns_reading_open_vswitch_off_and_null_keeps_the_default(ansible, tmp_path: Path, off) -> None:
    path = tmp_path / "etc" / "hwsflow" / "hwsflow.yaml"
    result = ansible("--tags", "config", str(SITE), extra=local_vars(tmp_path, hwsflow_ovsdb=off))
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_config(str(path)).ovsdb is None
    result = ansible("--tags", "config", str(SITE), extra=local_vars(tmp_path, hwsflow_ovsdb=None))
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_config(str(path)).ovsdb == DEFAULT_OVSDB_SOCKET


def test_role_installs_the_repository_unit_with_a_drop_in_that_verifies(ansible, tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    extra = local_vars(tmp_path, hwsflow_unit_dir=str(units), hwsflow_load_modules=False)
    result = ansible("--tags", "service", str(SITE), extra=extra)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (units / "hwsflow.service").read_bytes() == UNIT.read_bytes()
    drop_in = (units / "hwsflow.service.d" / "ansible.conf").read_text()
    assert f"ExecStart={VENV_HWSFLOW} run --config {extra['hwsflow_config']}\n" in drop_in
    verify = subprocess.run([shutil.which("systemd-analyze") or "systemd-analyze", "verify",
                             str(units / "hwsflow.service")], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if "hwsflow" in line]
    assert verify.returncode == 0 and not complaints, verify.stderr
