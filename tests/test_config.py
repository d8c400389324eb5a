"""The config file: the example, every class of error (file, key path, reason), rule precedence, fuzzing."""

import pickle
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwsflow.config import (
    DEFAULT_SETTINGS,
    Config,
    ConfigError,
    PortRule,
    PortSettings,
    Target,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "hwsflow.yaml"
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
                  "keep_filters", "control_socket"):
        assert getattr(example, field) == getattr(minimal, field), field


def test_example_sets_every_known_key():
    document = yaml.safe_load(EXAMPLE.read_text())
    assert set(document) == {
        "agent", "sub_agent_id", "targets", "sampling", "header", "direction", "offload", "priority", "chain",
        "polling", "group_base", "datagram_size", "expanded", "rcvbuf", "keep_filters", "control_socket", "ports",
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
    (with_port("name: eth1, colour: red"), "ports[1].colour", "known keys: name, match, switch_id, port_name, group, sampling, "),
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
    ("eth1", "ports[1]", "must be a mapping with `name`, `match`, `switch_id` or `port_name`, got the string 'eth1'"),
    ("[eth1]", "ports[1]", "got a list"),
    ("{sampling: 10}", "ports[1]", "needs at least one of `name` (an interface), `match` (a glob over interface "
                                   "names), `switch_id` or `port_name` to select ports"),
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
    err = config_error(MINIMAL + f"  - {item}\n")
    assert err.key == key
    assert reason in err.reason, err.reason


def test_duplicate_glob():
    err = config_error("targets: [192.0.2.1]\nports: [{match: 'a*'}, {name: a1}, {match: 'a*', sampling: 5}]")
    assert err.key == "ports[2].match"
    assert "already given in ports[0]" in err.reason


def test_name_and_glob_with_same_text_are_distinct_rules():
    config = parse_config("targets: [192.0.2.1]\nports: [{match: eth0}, {name: eth0}]")
    assert len(config.ports) == 2


# ------------------------------------------------------------------ datagram_size against header


def test_datagram_size_must_hold_the_global_header():
    err = config_error(with_top("header: 1024\ndatagram_size: 1223"))
    assert err.key == "datagram_size"
    assert err.reason == "1223 cannot hold one sample of header 1024: it must be at least header + 200 = 1224"


def test_datagram_size_must_hold_a_port_header():
    err = config_error("datagram_size: 300\ntargets: [192.0.2.1]\nports: [{name: eth0}, {name: eth1, header: 150}]")
    assert err.key == "datagram_size"
    assert "ports[1].header 150" in err.reason
    assert "ports[1].header + 200 = 350" in err.reason


def test_datagram_size_names_the_global_header_when_a_port_inherits_it():
    err = config_error("datagram_size: 300\nheader: 200\ntargets: [192.0.2.1]\nports: [{name: eth0, header: 64}, "
                       "{name: eth1}]")
    assert "of header 200" in err.reason


def test_datagram_size_just_large_enough():
    config = parse_config("datagram_size: 256\nheader: 56\ntargets: [192.0.2.1]\nports: [{name: eth0}]")
    assert config.datagram_size == 256


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
        config.polling = 5  # type: ignore[misc]
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
                                           "[2001:db8::1]:6343", "yes", "400", ""]),
)
keys = st.one_of(
    st.sampled_from(["agent", "sub_agent_id", "targets", "sampling", "header", "polling", "direction", "offload",
                     "priority", "chain", "group_base", "datagram_size", "expanded", "rcvbuf", "keep_filters",
                     "ports", "name", "match"]),
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
                                        "rcvbuf", "keep_filters"]), documents, max_size=4),
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
