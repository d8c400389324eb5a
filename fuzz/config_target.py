"""Fuzz target: config file bytes through load_config (and parse_config on the same text).

The contract checked (config.py docstrings): any file gives a Config or a
ConfigError naming the file, a key path and a reason, never another exception;
the error is one printable line a terminal can show, of bounded length; a Config
holds only values in their documented ranges.

    python -m fuzz.run config --seconds 600
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from functools import lru_cache

from hwsflow.core.config import SAMPLE_ROOM, Config, ConfigError, PortSettings, load_config, parse_config
from hwsflow.core.model import GROUP_ROOM, U32_MAX

# what one error may take: the file's path, then a key path and a reason written for a terminal line
ERROR_MAX = 400


def check_error(err: ConfigError, path: str) -> None:
    assert err.path == path and err.key and err.reason, repr(err)
    text = str(err)
    assert text.startswith(f"{path}: {err.key}: "), text
    shown = text[len(path) + 2:]
    assert len(shown) <= ERROR_MAX, f"error of {len(shown)} characters: {shown[:100]!r}..."
    assert shown.isprintable(), f"error with control characters: {shown!r}"
    shown.encode("utf-8")  # `hwsflow check-config` prints it: a lone surrogate would crash the print


def check_settings(settings: PortSettings) -> None:
    assert 1 <= settings.sampling <= U32_MAX and 14 <= settings.header <= 1024
    assert 1 <= settings.priority <= 65535 and 0 <= settings.chain <= U32_MAX
    assert settings.direction in ("ingress", "egress", "both") and settings.offload in ("auto", "required", "software")


def check_config(config: Config) -> None:
    assert config.targets and config.ports
    assert all(1 <= target.port <= 65535 and target.host for target in config.targets)
    assert 1 <= config.group_base <= U32_MAX - GROUP_ROOM + 1 and 0 <= config.polling <= 3600
    check_settings(config.defaults)
    for rule in config.ports:
        check_settings(rule.settings)
        assert any(s is not None for s in (rule.name, rule.match, rule.switch_id, rule.port_name))
        assert config.datagram_size >= rule.settings.header + SAMPLE_ROOM
    if config.metrics is not None:  # a listener: an IP literal, never a name, and a real port
        assert ipaddress.ip_address(config.metrics.host) and 1 <= config.metrics.port <= 65535


@lru_cache(maxsize=1)
def scratch_file() -> str:
    """One file per process that every input is written to (load_config reads a path)."""
    fd, path = tempfile.mkstemp(prefix="hwsflow-fuzz-", suffix=".yaml")
    os.close(fd)
    return path


def one_input(data: bytes) -> None:
    path = scratch_file()
    with open(path, "wb") as file:
        file.write(data)
    try:
        config = load_config(path)
    except ConfigError as err:
        check_error(err, path)
        outcome: object = str(err)
    else:
        check_config(config)
        outcome = config
    text = data.decode("utf-8-sig", errors="strict") if _is_utf8(data) else None
    if text is not None:  # the same text given directly: the same verdict
        try:
            again: object = parse_config(text, path)
        except ConfigError as err:
            again = str(err)
        assert again == outcome, (again, outcome)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    return True


SEED_DOCUMENTS = (
    'targets: ["192.0.2.10:6343", "[2001:db8::1]:6343"]\nports:\n  - name: eth0\n',
    "agent: eno1\ntargets: [collector.example:6343]\nsampling: 400\nheader: 128\npolling: 20\n"
    "direction: both\noffload: auto\npriority: 1\nchain: 0\ngroup_base: 1000\ndatagram_size: 1400\n"
    "expanded: false\nsub_agent_id: 3\nrcvbuf: 33554432\nkeep_filters: false\n"
    "control_socket: /run/hwsflow/control.sock\nports:\n  - name: enp4s0f0_1\n  - match: \"enp4s0f0_*\"\n"
    "    sampling: 1000\n    header: 64\n",
    "targets: [192.0.2.1]\nports:\n  - switch_id: '00154d1234'\n    port_name: 'pf0vf*'\n"
    "  - name: eth1\n    group: 7\n    direction: egress\n",
    "targets: &t [192.0.2.1]\nports: [{name: eth0, sampling: !!int '10'}]\n",
    "targets: [192.0.2.1, 192.0.2.1]\nports:\n  - name: eth0\n    sampling: yes\n",
)


def seeds() -> list[bytes]:
    return [document.encode() for document in SEED_DOCUMENTS]
