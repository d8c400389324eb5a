"""The config file: the example, every class of error (file, key path, reason), rule precedence, fuzzing."""

import pickle
import re
import tempfile
from dataclasses import replace

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwsflow.core.config import (
    DEFAULT_SETTINGS,
    GLOBAL_KEYS,
    Config,
    ConfigError,
    PortRule,
    SAMPLE_ROOM,
    PortSettings,
    Target,
    global_changes,
    load_config,
    parse_config,
)
from hwsflow.core.model import LinkInfo, switch_id_text
from tests.helpers.paths import REPO

EXAMPLE = REPO / "etc" / "hwsflow.yaml"
MINIMAL = "targets: [192.0.2.10]\nports:\n  - name: enp4s0f0_1\n"


def named(name: str, settings: PortSettings = DEFAULT_SETTINGS, **selectors) -> PortRule:
    return PortRule(**{"name": name, "match": None, "switch_id": None, "port_name": None, "group": None,
                       **selectors, "settings": settings})


def globbed(match: str, settings: PortSettings = DEFAULT_SETTINGS) -> PortRule:
    return PortRule(None, match, None, None, None, settings)


def config_error(text: str, path: str = "site.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    err = info.value
    assert str(err) == f"{path}: {err.key}: {err.reason}"
    assert err.path == path
    return err


def assert_second_rule_fails(item: str, key: str, reason: str) -> None:
    """MINIMAL plus the rule item (ports[1]) fails on key, with reason in its message."""
    err = config_error(MINIMAL + f"  - {item}\n")
    assert err.key == key
    assert reason in err.reason, err.reason


def with_top(extra: str) -> str:
    """MINIMAL with top-level lines added before it (YAML keeps them all: no duplicates involved)."""
    return extra + "\n" + MINIMAL


def with_port(extra: str) -> str:
    """MINIMAL plus a second port rule (ports[1]) carrying the given keys, in flow style."""
    return MINIMAL + f"  - {{{extra}}}\n"


# ------------------------------------------------------------------ the example file


def test_example_loads_with_expected_values():
    config = load_config(str(EXAMPLE))
    assert config.path == str(EXAMPLE)
    assert config.agent == "192.0.2.1"
    assert config.sub_agent_id == 0
    assert config.targets == (
        Target("192.0.2.10", 6343),
        Target("2001:db8::10", 6343),
        Target("collector.example", 6343),
    )
    assert config.polling == 20
    assert config.defaults == PortSettings(400, 128, "ingress", "auto", 1, 0)
    assert (config.group_base, config.datagram_size, config.rcvbuf) == (1000, 1400, 33554432)
    assert (config.expanded, config.keep_filters) == (False, False)
    assert config.ports == (
        named("enp4s0f0_1", PortSettings(400, 128, "both", "auto", 1, 0)),
        globbed("enp4s0f0_*", PortSettings(1000, 128, "ingress", "auto", 1, 0)),
    )


def test_example_rules_select_ports():
    config = load_config(str(EXAMPLE))
    assert config.settings_for("enp4s0f0_1").direction == "both"
    assert config.settings_for("enp4s0f0_1").sampling == 400  # the exact name, not the glob listed after it
    assert config.settings_for("enp4s0f0_7").sampling == 1000
    assert config.settings_for("enp4s0f0") is None
    assert config.settings_for("eno1") is None


def test_example_shows_every_key_at_its_default():
    """The example documents defaults in comments; the values it sets must be those defaults."""
    example = load_config(str(EXAMPLE))
    minimal = parse_config(MINIMAL)
    for field in ("sub_agent_id", "polling", "defaults", "group_base", "datagram_size", "expanded", "rcvbuf",
                  "keep_filters", "control_socket", "metrics", "ovsdb",
                  "max_samples_per_s", "backoff_hold"):
        assert getattr(example, field) == getattr(minimal, field), field


def test_example_sets_every_known_key():
    document = yaml.safe_load(EXAMPLE.read_text())
    assert set(document) == {
        "agent", "sub_agent_id", "targets", "sampling", "header", "direction", "offload", "priority", "chain",
        "polling", "group_base", "datagram_size", "expanded", "rcvbuf", "keep_filters", "control_socket", "metrics",
        "ovsdb", "max_samples_per_s", "backoff_hold", "ports",
    }


# ------------------------------------------------------------------ defaults and valid values


def test_minimal_config_takes_the_defaults():
    config = parse_config(MINIMAL)
    assert config.path == "<string>"
    assert config.agent is None
    assert config.sub_agent_id == 0
    assert config.targets == (Target("192.0.2.10", 6343),)
    assert config.polling == 20
    assert config.defaults == DEFAULT_SETTINGS == PortSettings(400, 128, "ingress", "auto", 1, 0)
    assert (config.group_base, config.datagram_size, config.rcvbuf) == (1000, 1400, 33554432)
    assert (config.expanded, config.keep_filters) == (False, False)
    assert config.ports == (named("enp4s0f0_1"),)


def test_port_rule_overrides_only_its_own_keys():
    text = with_top("sampling: 2000\nheader: 256\noffload: required\npriority: 7") + (
        "  - match: 'eth*'\n    header: 64\n    direction: egress\n    chain: 3\n"
    )
    config = parse_config(text)
    assert config.defaults == PortSettings(2000, 256, "ingress", "required", 7, 0)
    assert config.ports[0].settings == config.defaults
    assert config.ports[1].settings == PortSettings(2000, 64, "egress", "required", 7, 3)


@pytest.mark.parametrize("value", ["192.0.2.1", "2001:db8::1", "fe80::1%eno1", "eno1", "enp4s0f0_1", "br-ex.100",
                                   "a" * 15])
def test_agent_accepts_ip_or_interface(value):
    assert parse_config(with_top(f"agent: '{value}'")).agent == value


def test_agent_null_means_elect():
    assert parse_config(with_top("agent:")).agent is None
    assert parse_config(with_top("agent: null")).agent is None


@pytest.mark.parametrize("key,value", [
    ("sub_agent_id", 0), ("sub_agent_id", 2**32 - 1), ("sampling", 1), ("sampling", 2**32 - 1),
    ("header", 14), ("header", 1024), ("polling", 0), ("polling", 3600), ("priority", 1), ("priority", 65535),
    ("chain", 2**32 - 1), ("group_base", 1), ("group_base", 2**32 - 2**16), ("datagram_size", 1224),
    ("datagram_size", 65000), ("rcvbuf", 65536), ("rcvbuf", 2**31 - 1),
])
def test_integer_limits_are_inclusive(key, value):
    config = parse_config(with_top(f"{key}: {value}"))
    found = getattr(config.defaults, key) if key in PortSettings.__dataclass_fields__ else getattr(config, key)
    assert found == value


def test_yaml_integer_spellings_and_booleans():
    config = parse_config(with_top("sampling: 0x10\nrcvbuf: 1_048_576\nexpanded: yes\nkeep_filters: on"))
    assert config.defaults.sampling == 16
    assert config.rcvbuf == 1 << 20
    assert (config.expanded, config.keep_filters) == (True, True)


def test_utf8_bom_and_comments_are_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf# managed by Ansible\n" + MINIMAL.encode())
    assert load_config(str(path)).ports[0].name == "enp4s0f0_1"


# ------------------------------------------------------------------ targets


@pytest.mark.parametrize("text,host,port", [
    ("192.0.2.10:6343", "192.0.2.10", 6343),
    ("192.0.2.10", "192.0.2.10", 6343),
    ("192.0.2.10:9995", "192.0.2.10", 9995),
    ("[2001:db8::1]:6343", "2001:db8::1", 6343),
    ("[2001:db8::1]", "2001:db8::1", 6343),
    ("[2001:DB8:0:0::0001]:1", "2001:db8::1", 1),  # normalised, so duplicates are found
    ("[fe80::1%eno1]:6343", "fe80::1%eno1", 6343),
    ("[::ffff:192.0.2.1]:65535", "::ffff:c000:201", 65535),
    ("collector.example:6343", "collector.example", 6343),
    ("Collector.Example", "collector.example", 6343),
    ("collector", "collector", 6343),
    ("sflow_1.example.", "sflow_1.example.", 6343),
])
def test_targets(text, host, port):
    assert parse_config(f"targets: ['{text}']\nports: [{{name: eth0}}]").targets == (Target(host, port),)


def test_several_targets_keep_their_order():
    text = "targets:\n  - '[2001:db8::2]:6343'\n  - 192.0.2.2\n  - collector.example:6344\nports: [{name: eth0}]"
    assert [t.host for t in parse_config(text).targets] == ["2001:db8::2", "192.0.2.2", "collector.example"]


@pytest.mark.parametrize("item,key,reason", [
    ("'2001:db8::1'", "targets[0]", "in brackets"),
    ("'2001:db8::1:6343'", "targets[0]", "in brackets"),
    ("'[2001:db8::1'", "targets[0]", "missing ']'"),
    ("'[2001:db8::1]6343'", "targets[0]", "':port'"),
    ("'[192.0.2.1]:6343'", "targets[0]", "not an IPv6 address"),
    ("'[collector]:6343'", "targets[0]", "not an IPv6 address"),
    ("'192.0.2.1:0'", "targets[0]", "1 to 65535"),
    ("'192.0.2.1:65536'", "targets[0]", "1 to 65535"),
    ("'192.0.2.1:'", "targets[0]", "1 to 65535"),
    ("'192.0.2.1:+80'", "targets[0]", "1 to 65535"),
    ("'192.0.2.1:sflow'", "targets[0]", "1 to 65535"),
    ("'192.0.2.1:６３４３'", "targets[0]", "1 to 65535"),  # full-width digits are not a port
    ("':6343'", "targets[0]", "host is missing"),
    ("''", "targets[0]", "host is missing"),
    ("'192.0.2.300'", "targets[0]", "not a valid IPv4"),
    ("'192.0.2.010'", "targets[0]", "not a valid IPv4"),
    ("'collector example'", "targets[0]", "host name"),
    ("'-collector.example'", "targets[0]", "host name"),
    ("'collector..example'", "targets[0]", "host name"),
    ("'coll/ector'", "targets[0]", "host name"),
    ("6343", "targets[0]", "the integer 6343"),
    ("[192.0.2.1, 6343]", "targets[0]", "a list"),
    ("{host: 192.0.2.1}", "targets[0]", "a mapping"),
    ("null", "targets[0]", "null"),
])
def test_bad_target(item, key, reason):
    err = config_error(f"targets: [{item}]\nports: [{{name: eth0}}]")
    assert (err.key, reason in err.reason) == (key, True), err.reason


def test_bad_target_names_its_index():
    err = config_error("targets:\n  - 192.0.2.1\n  - 192.0.2.2\n  - 192.0.2.3:x\nports: [{name: eth0}]")
    assert err.key == "targets[2]"
    assert "'192.0.2.3:x'" in err.reason


@pytest.mark.parametrize("first,second", [
    ("192.0.2.1", "192.0.2.1:6343"),
    ("'[2001:db8::1]'", "'[2001:DB8:0::1]:6343'"),
    ("collector.example", "COLLECTOR.example:6343"),
])
def test_duplicate_target(first, second):
    err = config_error(f"targets: [{first}, {second}]\nports: [{{name: eth0}}]")
    assert err.key == "targets[1]"
    assert "repeats targets[0]" in err.reason


def test_same_host_other_port_is_another_collector():
    assert len(parse_config("targets: [192.0.2.1, '192.0.2.1:6344']\nports: [{name: eth0}]").targets) == 2


@pytest.mark.parametrize("value,reason", [
    ("192.0.2.1:6343", "must be a list"),
    ("[]", "at least one"),
    ("", "must be a list"),
])
def test_targets_must_be_a_non_empty_list(value, reason):
    err = config_error(f"targets: {value}\nports: [{{name: eth0}}]")
    assert err.key == "targets"
    assert reason in err.reason


# ------------------------------------------------------------------ document-level errors


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "null\n", "~"])
def test_empty_file(text):
    err = config_error(text)
    assert err.key == "-"
    assert "empty" in err.reason


@pytest.mark.parametrize("text,what", [
    ("- targets\n- ports\n", "a list"),
    ("hwsflow\n", "the string 'hwsflow'"),
    ("42\n", "the integer 42"),
    ("yes\n", "the boolean true"),
])
def test_top_level_must_be_a_mapping(text, what):
    err = config_error(text)
    assert err.key == "-"
    assert f"mapping of settings, got {what}" in err.reason


@pytest.mark.parametrize("text,line,column", [
    ("targets: [192.0.2.1\nports: []\n", 2, 6),
    ("targets:\n  - 192.0.2.1\n - x\n", 3, 2),
    ("ports:\n\t- name: eth0\n", 2, 1),
    ("a: b: c\n", 1, 5),
    ("a: 'open\n", 2, 1),
    ("targets: *nothing\n", 1, 10),
])
def test_yaml_syntax_error_gives_line_and_column(text, line, column):
    err = config_error(text)
    assert err.key == "-"
    assert err.reason.startswith(f"line {line}, column {column}: "), err.reason
    assert "\n" not in err.reason


def test_unprintable_character_gives_line_and_column():
    err = config_error(MINIMAL + "polling: 2\x00\n")
    assert err.key == "-"
    assert err.reason == "line 4, column 11: unacceptable character #x0000"


def test_second_document_is_an_error():
    err = config_error(MINIMAL + "---\n" + MINIMAL)
    assert err.key == "-"
    assert "single document" in err.reason


@pytest.mark.parametrize("value", ["!!int abc", "!!int ''", "!!float ''", "!!bool maybe", "2023-13-45",
                                   "!!timestamp x", "!!float x", "!!binary '@@@'",
                                   "!!python/object:os.system x", "!!set [a, [b]]", "{[a]: 1}", "9" * 5000])
def test_malformed_scalars_are_config_errors(value):
    err = config_error(with_top(f"polling: {value}"))
    assert err.key in ("-", "polling")


def test_recursive_alias_is_handled():
    err = config_error("targets: &t [*t]\nports: [{name: eth0}]")
    assert err.key == "targets[0]"


def test_deep_nesting_is_a_config_error():
    config_error("ports: " + "[" * 5000 + "]" * 5000)


def test_anchors_and_aliases_share_values():
    text = "sampling: &rate 2000\ntargets: [192.0.2.1]\nports: [{name: eth0}, {match: 'x*', header: &h 64}]\n" \
           "header: *h\n"
    config = parse_config(text)
    assert (config.defaults.sampling, config.defaults.header) == (2000, 64)


def test_yaml_merge_keys_work():
    text = "targets: [192.0.2.1]\nports:\n  - &p {match: 'a*', sampling: 10, header: 64}\n  - {<<: *p, match: 'b*'}"
    assert parse_config(text).ports[1] == globbed("b*", PortSettings(10, 64, "ingress", "auto", 1, 0))


# ------------------------------------------------------------------ keys: unknown, missing, duplicate


@pytest.mark.parametrize("text,key,hint", [
    (with_top("sampleing: 100"), "sampleing", "did you mean 'sampling'?"),
    (with_top("target: [192.0.2.1]"), "target", "did you mean 'targets'?"),
    (with_top("keep_filter: true"), "keep_filter", "did you mean 'keep_filters'?"),
    (with_top("polling_interval: 20"), "polling_interval", "did you mean 'polling'?"),
    (with_top("xyzzy: 1"), "xyzzy", "known keys: agent, "),
    (with_top("1: x"), "1", "known keys: "),
    (with_top("yes: x"), "True", "known keys: "),
    (with_port("name: eth1, samplig: 10"), "ports[1].samplig", "did you mean 'sampling'?"),
    (with_port("name: eth1, directon: both"), "ports[1].directon", "did you mean 'direction'?"),
    (with_port("nam: eth1"), "ports[1].nam", "did you mean 'name'?"),
    (with_port("name: eth1, sampler: 5"), "ports[1].sampler", "did you mean 'sampling'?"),
    (with_port("switchid: 'aabb'"), "ports[1].switchid", "did you mean 'switch_id'?"),
    (with_port("portname: p0"), "ports[1].portname", "did you mean 'port_name'?"),
    (with_port("name: eth1, groupe: 7"), "ports[1].groupe", "did you mean 'group'?"),
    (with_top("control_sock: /run/x.sock"), "control_sock", "did you mean 'control_socket'?"),
    (with_port("name: eth1, colour: red"), "ports[1].colour", "known keys: name, match, switch_id, port_name, bridge, tunnels, group, sampling, "),
])
def test_unknown_key_is_named_with_a_suggestion(text, key, hint):
    err = config_error(text)
    assert err.key == key
    assert err.reason.startswith("unknown key")
    assert hint in err.reason


@pytest.mark.parametrize("text,key,place", [
    (with_port("name: eth1, polling: 5"), "ports[1].polling", "at the top level, for all ports"),
    (with_port("name: eth1, agent: eth0"), "ports[1].agent", "at the top level, for all ports"),
    (with_top("name: eth0"), "name", "in a rule under `ports`"),
    (with_top("match: 'eth*'"), "match", "in a rule under `ports`"),
    (with_top("switch_id: 'aabb'"), "switch_id", "in a rule under `ports`"),
    (with_top("port_name: p0"), "port_name", "in a rule under `ports`"),
    (with_top("group: 7"), "group", "in a rule under `ports`"),
    (with_port("name: eth1, control_socket: /run/x.sock"), "ports[1].control_socket", "at the top level, for all ports"),
])
def test_key_at_the_wrong_level(text, key, place):
    err = config_error(text)
    assert (err.key, err.reason) == (key, f"unknown key here: it belongs {place}")


def test_unknown_key_is_reported_before_missing_required():
    assert config_error("port:\n  - name: eth0\ntargets: [192.0.2.1]\n").key == "port"


@pytest.mark.parametrize("text,key", [("ports: [{name: eth0}]", "targets"), ("targets: [192.0.2.1]", "ports")])
def test_missing_required_key(text, key):
    err = config_error(text)
    assert (err.key, err.reason) == (key, "missing; it is required")


@pytest.mark.parametrize("text,key,lines", [
    (MINIMAL + "sampling: 100\nsampling: 200\n", "sampling", "lines 4 and 5"),
    ("targets: [192.0.2.1]\nports:\n  - name: eth0\n    sampling: 1\n    sampling: 2\n", "ports[0].sampling",
     "lines 4 and 5"),
    ("targets: [192.0.2.1]\nports: [{name: eth0}, {name: eth1, header: 64, header: 65}]", "ports[1].header",
     "lines 2 and 2"),
    (MINIMAL + "'agent': eth0\nagent: eth1\n", "agent", "lines 4 and 5"),
    (MINIMAL + "ports: []\n", "ports", "lines 2 and 4"),
])
def test_key_given_twice(text, key, lines):
    err = config_error(text)
    assert err.key == key
    assert f"given twice ({lines})" in err.reason


# ------------------------------------------------------------------ values: types and ranges


INT_KEYS = {
    "sub_agent_id": (0, 2**32 - 1), "sampling": (1, 2**32 - 1), "header": (14, 1024), "polling": (0, 3600),
    "priority": (1, 65535), "chain": (0, 2**32 - 1), "group_base": (1, 2**32 - 2**16),
    "datagram_size": (256, 65000), "rcvbuf": (65536, 2**31 - 1),
}


@pytest.mark.parametrize("key", sorted(INT_KEYS))
@pytest.mark.parametrize("offset", [-1, +1])
def test_integer_out_of_range(key, offset):
    lo, hi = INT_KEYS[key]
    value = lo - 1 if offset < 0 else hi + 1
    err = config_error(with_top(f"{key}: {value}"))
    assert err.key == key
    assert err.reason.startswith(f"must be from {lo} to {hi}")
    assert err.reason.endswith(f"got {value}")


@pytest.mark.parametrize("key", sorted(INT_KEYS))
@pytest.mark.parametrize("value,described", [
    ("yes", "the boolean true (YAML reads yes/no"),
    ("off", "the boolean false"),
    ("'400'", "the string '400' (a quoted number: remove the quotes)"),
    ('"{{ rate }}"', "the string '{{ rate }}'"),
    ("1.5", "the number 1.5"),
    ("400.0", "the number 400.0"),
    ("", "nothing (null or an empty value)"),
    ("[400]", "a list"),
    ("{a: 1}", "a mapping"),
    ("2024-01-01", "a date"),
])
def test_integer_of_wrong_type(key, value, described):
    err = config_error(with_top(f"{key}: {value}"))
    assert err.key == key
    assert err.reason.startswith("must be an integer from")
    assert f"got {described}" in err.reason, err.reason


@pytest.mark.parametrize("key", ["expanded", "keep_filters"])
@pytest.mark.parametrize("value,described", [("1", "the integer 1"), ("'true'", "the string 'true'"), ("", "nothing")])
def test_boolean_of_wrong_type(key, value, described):
    err = config_error(with_top(f"{key}: {value}"))
    assert err.key == key
    assert err.reason.startswith("must be true or false, got " + described)


@pytest.mark.parametrize("text,key,reason", [
    (with_top("direction: egres"), "direction", "must be one of ingress, egress, both, got the string 'egres'; "
                                                "did you mean 'egress'?"),
    (with_top("direction: Ingress"), "direction", "did you mean 'ingress'?"),
    (with_top("direction: [ingress, egress]"), "direction", "got a list"),
    (with_top("offload: hardware"), "offload", "must be one of auto, required, software"),
    (with_top("offload: yes"), "offload", "the boolean true"),
    (with_port("name: eth1, offload: sofware"), "ports[1].offload", "did you mean 'software'?"),
    (with_port("name: eth1, direction: out"), "ports[1].direction", "must be one of ingress, egress, both"),
])
def test_choices(text, key, reason):
    err = config_error(text)
    assert err.key == key
    assert reason in err.reason


@pytest.mark.parametrize("key", ["sampling", "header", "priority", "chain"])
def test_per_port_values_are_checked_with_their_path(key):
    lo, _ = INT_KEYS[key]
    err = config_error(with_port(f"match: 'x*', {key}: {lo - 1}"))
    assert err.key == f"ports[1].{key}"
    assert err.reason.startswith(f"must be from {lo}")
    assert config_error(with_port(f"match: 'x*', {key}: true")).key == f"ports[1].{key}"


def test_group_base_reason_says_why():
    err = config_error(with_top(f"group_base: {2**32 - 1}"))
    assert "room for 65536 psample groups" in err.reason


@pytest.mark.parametrize("value,reason", [
    ("192.0.2.300", "neither an IP address nor an interface name"),
    ("'2001:db8::g'", "neither"),
    ("a_name_of_16_chr", "neither"),
    ("'eth 0'", "neither"),
    ("eth0/1", "neither"),
    ("'eth0:1'", "neither"),
    ("'.'", "neither"),
    ("''", "neither"),
    ("42", "the integer 42"),
    ("no", "the boolean false"),
    ("[eth0]", "a list"),
])
def test_bad_agent(value, reason):
    err = config_error(with_top(f"agent: {value}"))
    assert err.key == "agent"
    assert reason in err.reason


# ------------------------------------------------------------------ ports


@pytest.mark.parametrize("value,reason", [
    ("[]", "at least one"),
    ("enp4s0f0_1", "must be a list"),
    ("{name: eth0}", "must be a list"),
    ("", "must be a list"),
])
def test_ports_must_be_a_non_empty_list(value, reason):
    err = config_error(f"targets: [192.0.2.1]\nports: {value}\n")
    assert err.key == "ports"
    assert reason in err.reason


@pytest.mark.parametrize("item,key,reason", [
    ("eth1", "ports[1]", "must be a mapping with `name`, `match`, `switch_id`, `port_name` or `bridge`, got the string 'eth1'"),
    ("[eth1]", "ports[1]", "got a list"),
    ("{sampling: 10}", "ports[1]", "needs at least one of `name` (an interface), `match` (a glob over interface "
                                   "names), `switch_id`, `port_name` or `bridge` (an Open vSwitch bridge) to select ports"),
    ("{name: eth1, match: 'eth*'}", "ports[1]", "`name` and `match` exclude each other: give one of them"),
    ("{}", "ports[1]", "needs at least one of"),
    ("{name: 1234}", "ports[1].name", "must be an interface name, got the integer 1234"),
    ("{name: off}", "ports[1].name", "the boolean false"),
    ("{name: }", "ports[1].name", "nothing"),
    ("{name: enp4s0f0np0_pf0vf12}", "ports[1].name", "not an interface name"),
    ("{name: 'eth 1'}", "ports[1].name", "not an interface name"),
    ("{name: eth0/1}", "ports[1].name", "not an interface name"),
    ("{name: ''}", "ports[1].name", "not an interface name"),
    ("{name: '..'}", "ports[1].name", "not an interface name"),
    ("{match: ''}", "ports[1].match", "can match no interface name"),
    ("{match: 'eth *'}", "ports[1].match", "can match no interface name"),
    ("{match: 'a/*'}", "ports[1].match", "can match no interface name"),
    ("{match: [eth0]}", "ports[1].match", "must be a glob"),
    ("{name: enp4s0f0_1}", "ports[1].name", "'enp4s0f0_1' is already given in ports[0]"),
])
def test_bad_port_rule(item, key, reason):
    assert_second_rule_fails(item, key, reason)


def test_duplicate_glob():
    err = config_error("targets: [192.0.2.1]\nports: [{match: 'a*'}, {name: a1}, {match: 'a*', sampling: 5}]")
    assert err.key == "ports[2].match"
    assert "already given in ports[0]" in err.reason


def test_name_and_glob_with_same_text_are_distinct_rules():
    config = parse_config("targets: [192.0.2.1]\nports: [{match: eth0}, {name: eth0}]")
    assert len(config.ports) == 2


# ------------------------------------------------------------------ datagram_size against header


def test_datagram_size_must_hold_the_global_header():
    err = config_error(with_top("header: 1024\ndatagram_size: 1251"))
    assert err.key == "datagram_size"
    assert err.reason == "1251 cannot hold one sample of header 1024: it must be at least header + 228 = 1252"


def test_datagram_size_must_hold_a_port_header():
    err = config_error("datagram_size: 300\ntargets: [192.0.2.1]\nports: [{name: eth0}, {name: eth1, header: 150}]")
    assert err.key == "datagram_size"
    assert "ports[1].header 150" in err.reason
    assert f"ports[1].header padded to 152 + {SAMPLE_ROOM} = {152 + SAMPLE_ROOM}" in err.reason


def test_datagram_size_names_the_global_header_when_a_port_inherits_it():
    err = config_error("datagram_size: 300\nheader: 200\ntargets: [192.0.2.1]\nports: [{name: eth0, header: 64}, "
                       "{name: eth1}]")
    assert "of header 200" in err.reason


def test_datagram_size_just_large_enough():
    size = 56 + SAMPLE_ROOM
    config = parse_config(f"datagram_size: {size}\nheader: 56\ntargets: [192.0.2.1]\nports: [{{name: eth0}}]")
    assert config.datagram_size == size
    assert "datagram_size" in config_error(f"datagram_size: {size - 1}\nheader: 56\ntargets: [192.0.2.1]\n"
                                           "ports: [{name: eth0}]").key


def test_datagram_size_counts_the_header_padded_to_four():
    """sFlow pads the header bytes: a 57-byte header takes 60, and a datagram_size without them would cut it."""
    err = config_error(f"datagram_size: {57 + SAMPLE_ROOM}\nheader: 57\ntargets: [192.0.2.1]\nports: [{{name: eth0}}]")
    assert f"header padded to 60 + {SAMPLE_ROOM} = {60 + SAMPLE_ROOM}" in err.reason


# ------------------------------------------------------------------ settings_for precedence


def rules_config(*rules: str) -> Config:
    return parse_config("targets: [192.0.2.1]\nports:\n" + "".join(f"  - {rule}\n" for rule in rules))


def test_exact_name_wins_over_an_earlier_glob():
    config = rules_config("{match: 'enp*', sampling: 1}", "{name: enp4s0f0_1, sampling: 2}")
    assert config.settings_for("enp4s0f0_1").sampling == 2
    assert config.settings_for("enp4s0f0_2").sampling == 1


def test_first_matching_glob_wins():
    config = rules_config("{match: 'enp4s0f0_?', sampling: 1}", "{match: 'enp4s0f0_*', sampling: 2}",
                          "{match: '*', sampling: 3}")
    assert config.settings_for("enp4s0f0_1").sampling == 1
    assert config.settings_for("enp4s0f0_12").sampling == 2
    assert config.settings_for("eno1").sampling == 3


def test_glob_classes_and_case():
    config = rules_config("{match: 'eth[0-3]', sampling: 1}", "{match: 'ETH*', sampling: 2}")
    assert config.settings_for("eth2").sampling == 1
    assert config.settings_for("eth4") is None
    assert config.settings_for("ETH4").sampling == 2
    assert config.settings_for("Eth2") is None  # interface names are case-sensitive


def test_exact_name_is_not_a_glob():
    config = rules_config("{name: 'eth[0]'}")
    assert config.settings_for("eth[0]") is not None
    assert config.settings_for("eth0") is None


def test_no_rule_matches():
    assert rules_config("{name: eth0}", "{match: 'enp*'}").settings_for("lo") is None


# ------------------------------------------------------------------ the example's commented switchdev rules


def example_commented_rules() -> str:
    """The rules the example shows commented out under `ports`, uncommented ("  # - key:" / "  #   key:")."""
    text = EXAMPLE.read_text()
    after_ports = text[text.index("\nports:\n"):].splitlines()
    return "".join(line.replace("  # ", "  ", 1) + "\n" for line in after_ports
                   if re.match(r"  # (- |  )[a-z_]+: ", line))


def test_example_commented_rules_parse_with_the_active_ones():
    config = parse_config(EXAMPLE.read_text() + example_commented_rules())
    assert config.ports[2:] == (
        PortRule(None, None, "00154d1234", "pf0vf*", None, PortSettings(1000, 128, "ingress", "auto", 1, 0)),
        PortRule(None, None, "00154d1234", "p0", None, PortSettings(400, 128, "both", "auto", 1, 0)),
        named("enp4s0f0_2", group=7),
        PortRule(None, None, None, None, None, DEFAULT_SETTINGS, bridge="br-int", tunnels=True),
        globbed("eno*", replace(DEFAULT_SETTINGS, sampling_auto=True)),
    )
    assert config.rule_for(LinkInfo("enp4s0f0_5", "00154d1234", "pf0vf3")).settings.sampling == 1000
    assert config.rule_for(LinkInfo("enp4s0f0np0", "00154d1234", "p0")).settings.direction == "both"
    assert config.rule_for(LinkInfo("enp4s0f0_2", "00154d1234", "pf0vf1")).group == 7


# ------------------------------------------------------------------ switchdev selectors: parsing


@pytest.mark.parametrize("written,stored", [
    ("'00154d1234'", "00154d1234"),
    ("'00:15:4D:12:34'", "00154d1234"),
    ("'B8CEF6FFFE123456'", "b8cef6fffe123456"),
    ("00154d1234", "00154d1234"),  # has a letter, so YAML keeps it a string even unquoted
    ("'0015401234'", "0015401234"),
    ("'ab'", "ab"),
    ("'" + "ab" * 32 + "'", "ab" * 32),
])
def test_switch_id_is_normalised_to_sysfs_form(written, stored):
    assert parse_config(with_port(f"switch_id: {written}")).ports[1].switch_id == stored


def test_switch_id_text_is_the_sysfs_form():
    assert switch_id_text(bytes.fromhex("00154D1234")) == "00154d1234"


@pytest.mark.parametrize("value", ["p0", "pf0vf*", "pf[01]vf?", "pf0sf1"])
def test_port_name_glob(value):
    assert parse_config(with_port(f"port_name: '{value}'")).ports[1].port_name == value


def test_selectors_combine_in_one_rule():
    rule = parse_config(with_port("name: eth1, switch_id: 'aa:BB', port_name: p0, sampling: 9")).ports[1]
    assert rule == PortRule("eth1", None, "aabb", "p0", None, replace(DEFAULT_SETTINGS, sampling=9))
    rule = parse_config(with_port("match: 'enp*', port_name: 'pf0vf*'")).ports[1]
    assert (rule.name, rule.match, rule.switch_id, rule.port_name) == (None, "enp*", None, "pf0vf*")


@pytest.mark.parametrize("item,key,reason", [
    ("{switch_id: 0015401234}", "ports[1].switch_id",  # YAML 1.1 octal
     "must be a quoted string of hex digits, as /sys/class/net/PORT/phys_switch_id shows, got the integer 3539612 "
     "(YAML reads unquoted digits as a number: quote the id)"),
    ("{switch_id: 12:34:56}", "ports[1].switch_id", "got the integer 45296 (YAML reads unquoted digits as a number"),
    ("{switch_id: 1234}", "ports[1].switch_id", "got the integer 1234 (YAML reads"),
    ("{switch_id: yes}", "ports[1].switch_id", "got the boolean true"),
    ("{switch_id: }", "ports[1].switch_id", "got nothing"),
    ("{switch_id: [aa]}", "ports[1].switch_id", "got a list"),
    ("{switch_id: ''}", "ports[1].switch_id",
     "'' is not a switch id: pairs of hex digits as /sys/class/net/PORT/phys_switch_id shows them, such as "
     "'00154d1234' (or '00:15:4d:12:34')"),
    ("{switch_id: 'abc'}", "ports[1].switch_id", "'abc' is not a switch id"),
    ("{switch_id: 'xyzw'}", "ports[1].switch_id", "'xyzw' is not a switch id"),
    ("{switch_id: '0:15:4d'}", "ports[1].switch_id", "'0:15:4d' is not a switch id"),
    ("{switch_id: '0015:4d'}", "ports[1].switch_id", "is not a switch id"),
    ("{switch_id: '00:15:'}", "ports[1].switch_id", "is not a switch id"),
    ("{switch_id: '00-15-4d'}", "ports[1].switch_id", "is not a switch id"),
    ("{switch_id: '0x00154d'}", "ports[1].switch_id", "is not a switch id"),
    ("{switch_id: ' 00154d'}", "ports[1].switch_id", "is not a switch id"),
    ("{switch_id: '" + "ab" * 33 + "'}", "ports[1].switch_id", "is 33 bytes long; a switch id has at most 32"),
    ("{port_name: ''}", "ports[1].port_name", "'' can match no port name"),
    ("{port_name: 'pf0 vf*'}", "ports[1].port_name", "'pf0 vf*' can match no port name"),
    ("{port_name: 0}", "ports[1].port_name", 'must be a glob such as "pf0vf*", got the integer 0'),
    ("{port_name: [p0]}", "ports[1].port_name", "got a list"),
    ("{match: 'enp*', name: eth1, port_name: p0}", "ports[1]", "`name` and `match` exclude each other"),
])
def test_bad_switchdev_selector(item, key, reason):
    assert_second_rule_fails(item, key, reason)


@pytest.mark.parametrize("rules,key,reason", [
    (["{switch_id: '00154d1234'}", "{switch_id: '00:15:4D:12:34', sampling: 5}"], "ports[2].switch_id",
     "'00154d1234' is already given in ports[1]"),
    (["{port_name: 'pf0vf*'}", "{port_name: 'pf0vf*'}"], "ports[2].port_name", "'pf0vf*' is already given in ports[1]"),
    (["{switch_id: 'aabb', port_name: 'pf0vf*'}", "{port_name: 'pf0vf*', switch_id: 'AA:BB'}"], "ports[2]",
     "switch_id 'aabb' and port_name 'pf0vf*' are already given together in ports[1]"),
    (["{match: 'rep*', port_name: p0}", "{match: 'rep*', port_name: p0}"], "ports[2]",
     "match 'rep*' and port_name 'p0' are already given together in ports[1]"),
    (["{name: eth1}", "{name: eth1, group: 7}"], "ports[2].name", "'eth1' is already given in ports[1]"),
])
def test_rules_with_the_same_selectors(rules, key, reason):
    err = config_error(MINIMAL + "".join(f"  - {rule}\n" for rule in rules))
    assert (err.key, err.reason) == (key, reason)


def test_rules_with_overlapping_but_different_selectors_are_distinct():
    config = rules_config("{switch_id: 'aabb', port_name: 'pf0vf*'}", "{switch_id: 'aabb'}", "{port_name: 'pf0vf*'}",
                          "{name: eth0, switch_id: 'aabb'}", "{name: eth0}", "{match: eth0, switch_id: 'aabb'}")
    assert len(config.ports) == 6


# ------------------------------------------------------------------ receive-only groups


def test_receive_only_rule():
    config = parse_config(with_top("direction: both\nsampling: 100\noffload: required") +
                          "  - {name: rep7, group: 7, header: 64}\n  - {name: rep8, group: 4294967295, "
                          "direction: egress, sampling: 2000}\n")
    assert config.ports[1] == named("rep7", PortSettings(100, 64, "ingress", "required", 1, 0), group=7)
    assert config.ports[1].receive_only and not config.ports[0].receive_only
    # ingress by default, whatever the top level says: that describes hwsflow's own filters
    assert config.ports[2].settings == PortSettings(2000, 128, "egress", "required", 1, 0)
    assert config.ports[2].group == 2**32 - 1


@pytest.mark.parametrize("group_base,group", [(1000, 999), (1000, 1000 + 2**16), (1, 2**16 + 1), (2**16, 1)])
def test_receive_only_group_just_outside_own_groups(group_base, group):
    config = parse_config(with_top(f"group_base: {group_base}") + f"  - {{name: rep, group: {group}}}\n")
    assert config.ports[1].group == group


@pytest.mark.parametrize("item,key,reason", [
    ("{name: rep, group: 0}", "ports[1].group", "must be from 1 to 4294967295 (a psample group id), got 0"),
    ("{name: rep, group: 4294967296}", "ports[1].group", "must be from 1 to 4294967295"),
    ("{name: rep, group: '7'}", "ports[1].group", "got the string '7' (a quoted number: remove the quotes)"),
    ("{name: rep, group: }", "ports[1].group", "got nothing"),
    ("{group: 7}", "ports[1]", "needs at least one of `name`"),
    ("{match: 'rep*', group: 7}", "ports[1].group",
     "a receive-only group needs `name`: its samples are attributed to that one port"),
    ("{switch_id: 'aabb', port_name: p0, group: 7}", "ports[1].group", "a receive-only group needs `name`"),
    ("{name: rep, switch_id: 'aabb', group: 7}", "ports[1].switch_id",
     "cannot be combined with `group`: a receive-only group belongs to the one port `name` gives"),
    ("{name: rep, port_name: p0, group: 7}", "ports[1].port_name", "cannot be combined with `group`"),
    ("{name: rep, group: 7, offload: software}", "ports[1].offload",
     "has no effect for a receive-only group: hwsflow installs no filter for it"),
    ("{name: rep, group: 7, priority: 1}", "ports[1].priority", "has no effect for a receive-only group"),
    ("{name: rep, group: 7, chain: 0}", "ports[1].chain", "has no effect for a receive-only group"),
    ("{name: rep, group: 7, direction: both}", "ports[1].direction",
     "must be ingress or egress for a receive-only group (one group's samples come from one direction), "
     "got the string 'both'"),
    ("{name: rep, group: 7, direction: egres}", "ports[1].direction", "did you mean 'egress'?"),
    ("{name: rep, group: 7, sampling: 0}", "ports[1].sampling", "must be from 1"),
    ("{name: rep, group: 1000}", "ports[1].group",
     "1000 is among hwsflow's own psample groups (1000 to 66535, from group_base): choose a group outside them, "
     "or move group_base"),
    ("{name: rep, group: 66535}", "ports[1].group", "1000 to 66535"),
])
def test_bad_receive_only_rule(item, key, reason):
    assert_second_rule_fails(item, key, reason)


def test_receive_only_group_inside_a_moved_group_base():
    err = config_error(with_top("group_base: 5") + "  - {name: rep, group: 7}\n")
    assert (err.key, err.reason) == ("ports[1].group", "7 is among hwsflow's own psample groups (5 to 65540, from "
                                                       "group_base): choose a group outside them, or move group_base")


def test_receive_only_group_given_twice():
    err = config_error(MINIMAL + "  - {name: rep1, group: 7}\n  - {match: 'x*'}\n  - {name: rep2, group: 7}\n")
    assert (err.key, err.reason) == ("ports[3].group", "7 is already the group of ports[1]; one group's samples "
                                                       "can be attributed to one port only")


def test_receive_only_header_counts_for_datagram_size():
    err = config_error(with_top("datagram_size: 300") + "  - {name: rep, group: 7, header: 150}\n")
    assert err.key == "datagram_size"
    assert "ports[1].header 150" in err.reason


# ------------------------------------------------------------------ metrics


def test_metrics_is_off_by_default():
    assert parse_config(MINIMAL).metrics is None


@pytest.mark.parametrize("value,host,port", [
    ("'127.0.0.1:9465'", "127.0.0.1", 9465), ("'[::1]:9465'", "::1", 9465), ("0.0.0.0:1", "0.0.0.0", 1),
    ("'[2001:DB8::1]:65535'", "2001:db8::1", 65535),
])
def test_metrics_address(value, host, port):
    metrics = parse_config(with_top(f"metrics: {value}")).metrics
    assert metrics is not None and (metrics.host, metrics.port) == (host, port)


@pytest.mark.parametrize("value,reason", [
    ("localhost:9465", "'localhost:9465': the host must be an IP address, as in \"127.0.0.1:9465\" or \"[::1]:9465\""),
    ("127.0.0.1", "'127.0.0.1': give the port"),
    ("'[::1]'", "'[::1]': give the port"),
    ("127.0.0.1:0", "the port must be a number from 1 to 65535"),
    ("'::1:9465'", "write an IPv6 address in brackets"),
    ("9465", "got the integer 9465"),
    ("yes", "got the boolean true"),
    ("['127.0.0.1:9465']", "got a list"),
])
def test_metrics_errors_name_the_key(value, reason):
    with pytest.raises(ConfigError) as info:
        parse_config(with_top(f"metrics: {value}"))
    assert info.value.key == "metrics"
    assert reason in info.value.reason


# ------------------------------------------------------------------ control_socket


@pytest.mark.parametrize("value", ["/run/hwsflow/control.sock", "/tmp/h.sock", "/run/with space/s", "/x",
                                   "/" + "a" * 106])
def test_control_socket(value):
    assert parse_config(with_top(f"control_socket: '{value}'")).control_socket == value


def test_control_socket_default():
    assert parse_config(MINIMAL).control_socket == "/run/hwsflow/control.sock"


@pytest.mark.parametrize("value,reason", [
    ("run/hwsflow.sock", "'run/hwsflow.sock' is not an absolute path (it must start with '/')"),
    ("'~/hwsflow.sock'", "is not an absolute path"),
    ("''", "'' is not an absolute path"),
    ("/run/hwsflow/", "'/run/hwsflow/' names a directory; give the socket's own path, such as "
                      "/run/hwsflow/control.sock"),
    ("/", "names a directory"),
    ("'/" + "a" * 107 + "'", "is 108 bytes long; a Unix socket path holds at most 107"),
    ("'/" + "é" * 54 + "'", "is 109 bytes long"),  # bytes, not characters
    ('"/run/a\\0b"', "'/run/a\\x00b' contains a control character (NUL, newline, ...)"),
    ('"/run/a.sock\\n"', "contains a control character"),
    ("", "must be an absolute path, got nothing (null or an empty value)"),
    ("42", "must be an absolute path, got the integer 42"),
    ("[/run/a]", "got a list"),
])
def test_bad_control_socket(value, reason):
    err = config_error(with_top(f"control_socket: {value}"))
    assert err.key == "control_socket"
    assert reason in err.reason, err.reason


# ------------------------------------------------------------------ rule_for: selection over LinkInfo


VF3 = LinkInfo("enp4s0f0_3", "00154d1234", "pf0vf3")
UPLINK = LinkInfo("enp4s0f0np0", "00154d1234", "p0")
OTHER_SWITCH_VF3 = LinkInfo("enp5s0f0_3", "00154d9999", "pf0vf3")
PLAIN = LinkInfo("eno1")


def test_selects_is_the_and_of_given_selectors():
    both = rules_config("{switch_id: '00154d1234', port_name: 'pf0vf*'}").ports[0]
    assert both.selects(VF3)
    assert not both.selects(UPLINK)  # port name differs
    assert not both.selects(OTHER_SWITCH_VF3)  # switch differs
    assert not both.selects(PLAIN)
    assert not both.selects(LinkInfo("enp4s0f0_3", "00154d1234"))  # no port name: never selected
    assert not both.selects(LinkInfo("enp4s0f0_3", None, "pf0vf3"))  # no switch id: never selected


def test_name_and_glob_combine_with_switchdev_selectors():
    config = rules_config("{match: 'enp4s0f0_*', port_name: 'pf0vf*'}", "{name: eno1, switch_id: 'aabb'}")
    assert config.ports[0].selects(VF3)
    assert not config.ports[0].selects(replace(VF3, ifname="eth3"))
    assert not config.ports[0].selects(LinkInfo("enp4s0f0_3"))
    assert config.ports[1].selects(LinkInfo("eno1", "aabb"))
    assert not config.ports[1].selects(PLAIN)


def test_port_name_glob_is_case_sensitive_and_whole():
    rule = rules_config("{port_name: 'pf0vf?'}").ports[0]
    assert rule.selects(VF3)
    assert not rule.selects(LinkInfo("x", port_name="pf0vf12"))
    assert not rule.selects(LinkInfo("x", port_name="PF0VF3"))
    assert not rule.selects(LinkInfo("x", port_name="pf1vf3"))


def test_rule_for_exact_name_wins_over_earlier_switchdev_rule():
    config = rules_config("{switch_id: '00154d1234', sampling: 1}", "{match: 'enp*', sampling: 2}",
                          "{name: enp4s0f0_3, sampling: 3}")
    assert config.rule_for(VF3).settings.sampling == 3
    assert config.rule_for(UPLINK).settings.sampling == 1
    assert config.rule_for(OTHER_SWITCH_VF3).settings.sampling == 2


def test_rule_for_first_selecting_rule_in_file_order():
    config = rules_config("{port_name: p0, sampling: 1}", "{switch_id: '00154d1234', port_name: 'pf0vf*', "
                          "sampling: 2}", "{switch_id: '00154d1234', sampling: 3}", "{match: '*', sampling: 4}")
    assert config.rule_for(UPLINK).settings.sampling == 1
    assert config.rule_for(VF3).settings.sampling == 2
    assert config.rule_for(LinkInfo("enp4s0f0", "00154d1234", "pf0")).settings.sampling == 3
    assert config.rule_for(OTHER_SWITCH_VF3).settings.sampling == 4
    assert config.rule_for(PLAIN).settings.sampling == 4


def test_rule_for_named_rule_whose_other_selectors_fail_does_not_win():
    config = rules_config("{match: 'enp*', sampling: 1}", "{name: enp4s0f0_3, switch_id: 'ffff', sampling: 2}",
                          "{name: enp4s0f0_3, switch_id: '00154d1234', sampling: 3}")
    assert config.rule_for(VF3).settings.sampling == 3
    assert config.rule_for(replace(VF3, switch_id="ffff")).settings.sampling == 2
    assert config.rule_for(replace(VF3, switch_id="eeee")).settings.sampling == 1


def test_links_without_switchdev_attributes_only_meet_name_rules():
    config = rules_config("{switch_id: '00154d1234'}", "{port_name: '*'}")
    assert config.rule_for(PLAIN) is None
    assert config.settings_for("enp4s0f0_3") is None
    assert config.rule_for(VF3) is config.ports[0]


def test_rule_for_receive_only_by_name():
    config = rules_config("{match: 'rep*', sampling: 1}", "{name: rep7, group: 7}")
    assert config.rule_for(LinkInfo("rep7", "aabb", "pf0vf7")).group == 7
    assert config.rule_for(LinkInfo("rep8")).group is None
    assert config.settings_for("rep7") == config.ports[1].settings


def test_settings_for_is_rule_for_by_name():
    config = rules_config("{match: 'e*', sampling: 1}", "{name: eth0, sampling: 2}")
    for ifname in ("eth0", "eth1", "lo"):
        rule = config.rule_for(LinkInfo(ifname))
        assert config.settings_for(ifname) == (rule.settings if rule else None)


def test_named_ports_lists_each_name_once_in_file_order():
    config = rules_config("{name: b}", "{match: 'x*'}", "{name: a, group: 7}", "{name: b, switch_id: 'aabb'}",
                          "{port_name: p0}")
    assert config.named_ports() == ("b", "a")
    assert rules_config("{match: 'x*'}").named_ports() == ()


@given(st.binary(min_size=1, max_size=32), st.booleans(), st.booleans())
@settings(max_examples=100)
def test_switch_id_round_trip(raw, colons, upper):
    text = (":" if colons else "").join(f"{byte:02x}" for byte in raw)
    config = rules_config(f"{{switch_id: '{text.upper() if upper else text}'}}")
    assert config.rule_for(LinkInfo("x", switch_id_text(raw))) is config.ports[0]
    assert config.rule_for(LinkInfo("x", switch_id_text(raw + b"\0"))) is None


# ------------------------------------------------------------------ reload: equality and global_changes


def test_same_text_gives_equal_configs():
    text = with_top("sampling: 7") + "  - {switch_id: 'AA:BB', port_name: 'pf0vf*'}\n  - {name: rep, group: 7}\n"
    assert parse_config(text) == parse_config(text)
    assert parse_config(text).ports == parse_config(text.replace("'AA:BB'", "aabb")).ports


def test_global_keys_are_config_fields():
    assert set(GLOBAL_KEYS) <= set(Config.__dataclass_fields__) - {"path", "defaults", "ports"}


@pytest.mark.parametrize("key,line", [
    ("agent", "agent: 192.0.2.7"),
    ("sub_agent_id", "sub_agent_id: 3"),
    ("targets", None),
    ("group_base", "group_base: 5000"),
    ("datagram_size", "datagram_size: 1500"),
    ("expanded", "expanded: true"),
    ("rcvbuf", "rcvbuf: 65536"),
    ("control_socket", "control_socket: /run/other.sock"),
    ("polling", "polling: 30"),
    ("keep_filters", "keep_filters: true"),
])
def test_global_changes_names_each_key(key, line):
    old = parse_config(MINIMAL)
    new = parse_config(with_top(line) if line else MINIMAL.replace("192.0.2.10", "192.0.2.11"))
    assert global_changes(old, new) == [key]
    assert global_changes(new, old) == [key]


def test_global_changes_ignores_port_settings_and_rules_and_path():
    old = parse_config(MINIMAL, "a.yaml")
    new = parse_config(with_top("sampling: 10\nheader: 64\ndirection: egress\noffload: software\npriority: 2\n"
                                "chain: 1") + "  - {switch_id: 'aabb'}\n  - {name: rep, group: 7}\n", "b.yaml")
    assert old != new
    assert global_changes(old, new) == []
    assert global_changes(old, old) == []


def test_global_changes_keeps_global_keys_order():
    old = parse_config(MINIMAL)
    new = parse_config(with_top("keep_filters: true\npolling: 5\nagent: eth9"))
    assert global_changes(old, new) == ["agent", "polling", "keep_filters"]


# ------------------------------------------------------------------ load_config and ConfigError


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.path, info.value.key) == (path, "-")
    assert str(info.value) == f"{path}: -: cannot read the file: No such file or directory"


def test_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert info.value.key == "-"
    assert info.value.reason.startswith("cannot read the file")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"{path}: -: not UTF-8 text (bad byte at offset {len(MINIMAL) + 5})"


def test_load_config_names_the_file_in_value_errors(tmp_path):
    path = tmp_path / "hwsflow.yaml"
    path.write_text(MINIMAL + "  - name: eth1\n    sampling: yes\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: ports[1].sampling: must be an integer")


def test_config_error_keeps_its_parts_through_pickle():
    err = ConfigError("a.yaml", "ports[0].name", "bad")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.key, copy.reason) == ("a.yaml", "ports[0].name", "bad")
    assert str(copy) == "a.yaml: ports[0].name: bad"


def test_config_is_frozen():
    config = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        config.polling = 5  # type: ignore[misc]  # writing to the frozen config is the point
    assert hash(config.ports[0]) == hash(named("enp4s0f0_1"))


# ------------------------------------------------------------------ fuzzing: only ConfigError ever escapes


def parses_or_config_error(text: str) -> Config | ConfigError:
    try:
        return parse_config(text, "fuzz.yaml")
    except ConfigError as err:
        assert err.path == "fuzz.yaml"
        assert err.key and err.reason
        return err


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["ingress", "both", "auto", "eth0", "enp4s0f0_*", "192.0.2.1:6343",
                                           "[2001:db8::1]:6343", "yes", "400", "", "00:15:4d:12:34", "pf0vf*",
                                           "/run/hwsflow/control.sock", "127.0.0.1:9465"]),
)
keys = st.one_of(
    st.sampled_from(["agent", "sub_agent_id", "targets", "sampling", "header", "polling", "direction", "offload",
                     "priority", "chain", "group_base", "datagram_size", "expanded", "rcvbuf", "keep_filters",
                     "control_socket", "metrics", "ports", "name", "match", "switch_id", "port_name", "group"]),
    st.text(max_size=10), st.integers(), st.booleans(), st.none(),
)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
                         max_leaves=25)


@given(documents)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_random_documents_give_config_or_config_error(document):
    parses_or_config_error(yaml.safe_dump(document, allow_unicode=True))


@given(st.dictionaries(st.sampled_from(["agent", "sub_agent_id", "sampling", "header", "polling", "direction",
                                        "offload", "priority", "chain", "group_base", "datagram_size", "expanded",
                                        "rcvbuf", "keep_filters", "control_socket", "metrics"]), documents,
                                       max_size=4),
       st.lists(st.dictionaries(keys, documents, max_size=4), max_size=3))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_near_valid_documents_fail_on_a_named_key(top, extra_ports):
    """Well-formed YAML with a valid skeleton: an error must name a key, never "-"."""
    document = {"targets": ["192.0.2.1"], "ports": [{"name": "eth0"}, *extra_ports], **top}
    result = parses_or_config_error(yaml.safe_dump(document, allow_unicode=True))
    if isinstance(result, ConfigError):
        assert result.key != "-"


yaml_fragments = st.sampled_from([
    "targets:", "ports:", "- ", "name: ", "match: ", "sampling: ", "agent: ", "\n", "  ", "    ", "[", "]", "{", "}",
    ",", ":", "&a ", "*a", "<<: ", "!!int ", "!!str ", "!!timestamp ", "!!binary ", "!!set ", "? ", "'", '"', "#",
    "|", ">", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2024:\n", "!x ", "192.0.2.1", "[2001:db8::1]:6343",
    "eth0", "400", "yes", "~", "2023-13-45", "0x", "1e9", "\t", "\\", "\x00", "\ufeff", "\ud800",
])


@given(st.lists(yaml_fragments, max_size=40).map("".join))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_yaml_ish_text_gives_config_or_config_error(text):
    parses_or_config_error(text)


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_random_text_gives_config_or_config_error(text):
    parses_or_config_error(text)


@given(st.binary(max_size=200), st.sampled_from(["utf-8", "latin-1", "utf-16"]))
@settings(max_examples=300)
def test_random_bytes_as_text_give_config_or_config_error(data, encoding):
    parses_or_config_error(data.decode(encoding, errors="surrogateescape" if encoding == "utf-8" else "replace"))


@given(st.binary(max_size=200))
@settings(max_examples=100)
def test_random_files_give_config_or_config_error(data):
    with tempfile.NamedTemporaryFile(suffix=".yaml") as file:
        file.write(data)
        file.flush()
        try:
            load_config(file.name)
        except ConfigError as err:
            assert err.path == file.name


port_settings = st.fixed_dictionaries({}, optional={
    "sampling": st.integers(1, 2**32 - 1), "header": st.integers(14, 1024),
    "direction": st.sampled_from(["ingress", "egress", "both"]),
    "offload": st.sampled_from(["auto", "required", "software"]),
    "priority": st.integers(1, 65535), "chain": st.integers(0, 2**32 - 1),
})


@given(port_settings, st.lists(port_settings, min_size=1, max_size=5),
       st.integers(1, 65535), st.integers(0, 3600), st.integers(1, 2**32 - 2**16))
@settings(max_examples=200)
def test_valid_values_round_trip(top, port_overrides, port, polling, group_base):
    ports = [{"name": f"eth{index}", **override} for index, override in enumerate(port_overrides)]
    document = {"targets": [f"192.0.2.1:{port}"], "polling": polling, "group_base": group_base,
                "datagram_size": 65000, "ports": ports, **top}
    config = parse_config(yaml.safe_dump(document))
    defaults = PortSettings(**{**DEFAULT_SETTINGS.__dict__, **top})
    assert config.defaults == defaults
    assert (config.targets[0].port, config.polling, config.group_base) == (port, polling, group_base)
    for index, override in enumerate(port_overrides):
        assert config.settings_for(f"eth{index}") == PortSettings(**{**defaults.__dict__, **override})


# ------------------------------------------------------------------ every problem at once


def test_every_problem_of_a_file_is_listed_with_its_key_path():
    err = config_error(
        "targets: ['192.0.2.1', 'collector..bad', '192.0.2.1:6343']\n"
        "sampling: 0\npolling: yes\nbogus: 1\n"
        "ports:\n"
        "  - name: eth0\n    sampling: -1\n    hedaer: 64\n"
        "  - name: 'eth 1'\n    direction: sideways\n"
        "  - name: eth2\n"
        "  - name: eth2\n")
    assert [key for key, _ in err.problems] == [
        "bogus", "sampling", "targets[1]", "targets[2]", "polling",
        "ports[0].hedaer", "ports[0].sampling", "ports[1].name", "ports[1].direction", "ports[3].name",
    ]
    assert (err.key, err.reason) == err.problems[0]  # str() stays the first, on one line
    assert "repeats targets[0]" in dict(err.problems)["targets[2]"]
    assert "already given in ports[2]" in dict(err.problems)["ports[3].name"]
    assert err.lines()[1] == "site.yaml: sampling: must be from 1 to 4294967295, got 0"


def test_a_check_across_keys_runs_only_on_valid_keys():
    # the header is wrong: whether the datagram holds one sample of it cannot be judged, and is not
    err = config_error(MINIMAL + "header: 5000\ndatagram_size: 300\n")
    assert [key for key, _ in err.problems] == ["header"]
    err = config_error(MINIMAL + "header: 512\ndatagram_size: 300\nsampling: 0\n")
    assert [key for key, _ in err.problems] == ["sampling", "datagram_size"]


def test_config_error_keeps_every_problem_through_pickle():
    err = ConfigError("a.yaml", "x", "bad", (("x", "bad"), ("y", "worse")))
    copy = pickle.loads(pickle.dumps(err))
    assert copy.problems == (("x", "bad"), ("y", "worse"))
    assert copy.lines() == ["a.yaml: x: bad", "a.yaml: y: worse"]


# ------------------------------------------------------------------ Open vSwitch bridges


def test_bridge_rule():
    config = parse_config(MINIMAL + "  - bridge: br-int\n    sampling: 1000\n  - bridge: br0\n    tunnels: true\n")
    first, second = config.ports[1:]
    assert first.bridge == "br-int" and not first.tunnels and first.settings.sampling == 1000
    assert second.bridge == "br0" and second.tunnels
    assert config.bridge_rules() == {"br-int": "ports[1]", "br0": "ports[2]"}
    assert config.ovsdb == "/var/run/openvswitch/db.sock"


def test_ovsdb_socket():
    assert parse_config(with_top("ovsdb: /usr/local/var/run/openvswitch/db.sock")).ovsdb == \
        "/usr/local/var/run/openvswitch/db.sock"
    assert parse_config(with_top("ovsdb: unix:/run/ovs/db.sock")).ovsdb == "/run/ovs/db.sock"  # as --db= writes it
    assert parse_config(with_top("ovsdb: null")).ovsdb is None
    assert "ovsdb" in GLOBAL_KEYS


@pytest.mark.parametrize("value,reason", [
    ("db.sock", "not an absolute path"), ("tcp:127.0.0.1:6640", "not an absolute path"), ("5", "must be the path"),
    ("/" + "x" * 120, "at most 107"),
])
def test_bad_ovsdb_socket(value, reason):
    err = config_error(with_top(f"ovsdb: {value}"))
    assert err.key == "ovsdb" and reason in err.reason, err.reason


def test_bridge_rules_need_the_database():
    err = config_error("ovsdb: null\n" + MINIMAL + "  - bridge: br0\n")
    assert err.key == "ovsdb" and "`bridge` rules" in err.reason


@pytest.mark.parametrize("item,key,reason", [
    ("{bridge: 5}", "ports[1].bridge", "must be an Open vSwitch bridge name"),
    ("{bridge: 'br 0'}", "ports[1].bridge", "is not a bridge name"),
    ("{bridge: br0, tunnels: 'yes'}", "ports[1].tunnels", "must be true or false"),
    ("{match: 'vx*', tunnels: true}", "ports[1].tunnels", "applies to `bridge` rules only"),
    ("{name: p0, bridge: br0, group: 9}", "ports[1].bridge", "cannot be combined with `group`"),
    ("{bridge: br0, tunel: true}", "ports[1].tunel", "did you mean 'tunnels'?"),
])
def test_bad_bridge_rule(item, key, reason):
    assert_second_rule_fails(item, key, reason)


def test_the_same_bridge_twice_unless_tunnels_differ():
    err = config_error(MINIMAL + "  - bridge: br0\n  - bridge: br0\n")
    assert err.key == "ports[2].bridge" and "already given in ports[1]" in err.reason
    config = parse_config(MINIMAL + "  - bridge: br0\n  - bridge: br0\n    tunnels: true\n    sampling: 4000\n")
    assert [rule.tunnels for rule in config.ports[1:]] == [False, True]


def test_back_off_keys_name_the_file_and_key():
    bad = ("targets: [192.0.2.10]\nmax_samples_per_s: -5\nbackoff_hold: 0\n"
           "ports:\n  - name: a\n    max_samples_per_s: 0\n  - name: b\n    group: 7\n    max_samples_per_s: 10\n")
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "/etc/hwsflow/hwsflow.yaml")
    lines = err.value.lines()
    assert any(line.startswith("/etc/hwsflow/hwsflow.yaml: max_samples_per_s: must be from 0 to") for line in lines)
    assert any(line.startswith("/etc/hwsflow/hwsflow.yaml: backoff_hold: must be from 1 to 3600") for line in lines)
    assert any("ports[0].max_samples_per_s: must be from 1 to" in line for line in lines)
    assert any("ports[1].max_samples_per_s: has no effect for a receive-only group" in line for line in lines)


def test_back_off_defaults_and_the_way_to_turn_it_off():
    config = parse_config("targets: [192.0.2.10]\nports:\n  - name: a\n")
    assert (config.max_samples_per_s, config.backoff_hold) == (50_000, 20)
    assert config.ports[0].settings.max_samples_per_s is None
    off = parse_config("targets: [192.0.2.10]\nmax_samples_per_s: 0\nports:\n  - name: a\n    max_samples_per_s: 300\n")
    assert off.max_samples_per_s == 0 and off.ports[0].settings.max_samples_per_s == 300
