"""Fuzzing the config loader: one damaged key in a complete config, damaged YAML text, raw files.

test_config.py fuzzes random documents, YAML fragments and random text, and
checks each class of error on hand-written cases.  Here a complete, valid file
is damaged in one place drawn at random (any key, at the top or in a rule, with
a value of any wrong type or out of range, or an unknown key), and the error
must name exactly that key; damaged text and raw files must end in a
ConfigError that is one printable, bounded line (fuzz/config_target.py).
"""

from __future__ import annotations

import copy
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.config_target import ERROR_MAX, check_config, check_error, one_input, seeds
from fuzz.limits import deadline
from hwsflow.core.config import MAX_FILE, ConfigError, _INT_RANGES, _PORT_KEYS, _TOP_KEYS, load_config, parse_config

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COMPLETE = {
    "agent": "eno1", "sub_agent_id": 3, "targets": ["192.0.2.10:6343", "[2001:db8::1]:6343"], "sampling": 400,
    "header": 128, "polling": 20, "direction": "both", "offload": "auto", "priority": 1, "chain": 0,
    "group_base": 1000, "datagram_size": 1400, "expanded": False, "rcvbuf": 33554432, "keep_filters": False,
    "control_socket": "/run/hwsflow/control.sock", "metrics": "127.0.0.1:9465",
    "ports": [{"name": "enp4s0f0_1", "sampling": 100}, {"match": "enp4s0f0_*", "header": 64, "direction": "ingress"},
              {"switch_id": "00154d1234", "port_name": "pf0vf*", "offload": "software", "priority": 3, "chain": 2}],
}
TOP_INTS = ("sub_agent_id", "sampling", "header", "polling", "priority", "chain", "group_base", "datagram_size",
            "rcvbuf")
PORT_INTS = ("sampling", "header", "priority", "chain")
CHOICES = {"direction": ("ingress", "egress", "both"), "offload": ("auto", "required", "software")}
BOOLS = ("expanded", "keep_filters")

plain_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
structures = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(plain_text, st.integers(), max_size=2))


def wrong_int(key: str) -> st.SearchStrategy[object]:
    limits = _INT_RANGES[key]
    return st.one_of(
        st.integers(max_value=limits.lo - 1), st.integers(min_value=limits.hi + 1),
        st.floats(allow_nan=True), st.booleans(), st.none(), plain_text, structures,
        st.integers(limits.lo, limits.hi).map(str),  # a quoted number
    )


def wrong_choice(key: str) -> st.SearchStrategy[object]:
    return st.one_of(plain_text.filter(lambda text: text not in CHOICES[key]), st.integers(), st.booleans(),
                     st.none(), structures)


wrong_bool = st.one_of(st.integers(), plain_text, st.none(), st.floats(allow_nan=False), structures)


@st.composite
def one_wrong_value(draw: st.DrawFn) -> tuple[dict, str, str]:
    """COMPLETE with one value made wrong: (document, the key path at fault, what the reason says)."""
    document = copy.deepcopy(COMPLETE)
    where = draw(st.sampled_from(["top", 0, 1, 2]))
    if where == "top":
        key = draw(st.sampled_from([*TOP_INTS, *CHOICES, *BOOLS]))
        target, path = document, key
    else:
        key = draw(st.sampled_from([*PORT_INTS, *CHOICES]))
        target, path = document["ports"][where], f"ports[{where}].{key}"
    if key in CHOICES:
        target[key], reason = draw(wrong_choice(key)), "must be one of"
    elif key in BOOLS:
        target[key], reason = draw(wrong_bool), "must be true or false"
    else:
        target[key], reason = draw(wrong_int(key)), "must be "
    return document, path, reason


@SETTINGS
@given(one_wrong_value())
def test_one_wrong_value_is_named_exactly(case):
    document, path, reason = case
    with deadline(10, "parsing one config"), pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(document, allow_unicode=True), "site.yaml")
    check_error(info.value, "site.yaml")
    assert info.value.key == path and reason in info.value.reason, str(info.value)


known = set(_TOP_KEYS) | set(_PORT_KEYS)
unknown_keys = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp", "Co", "Cn")),
                       min_size=1, max_size=30).filter(lambda key: key not in known and key.isprintable())


@SETTINGS
@given(unknown_keys, st.sampled_from(["top", 0, 1, 2]), st.one_of(st.integers(), plain_text, st.none()))
def test_an_unknown_key_is_named_exactly(key, where, value):
    document = copy.deepcopy(COMPLETE)
    (document if where == "top" else document["ports"][where])[key] = value
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(document, allow_unicode=True), "site.yaml")
    check_error(info.value, "site.yaml")
    assert info.value.key == (key if where == "top" else f"ports[{where}].{key}")
    assert info.value.reason.startswith("unknown key")


@SETTINGS
@given(st.sampled_from(["agent", "targets", "control_socket", "metrics", "name", "match", "switch_id", "port_name"]),
       st.one_of(plain_text, st.text(min_size=200, max_size=5000), st.integers(), st.floats(), st.none(),
                 structures, st.lists(plain_text, max_size=3)))
def test_any_value_of_a_text_key_gives_config_or_a_bounded_error_naming_it(key, value):
    document = copy.deepcopy(COMPLETE)
    rule_with = {"name": 0, "match": 1, "switch_id": 2, "port_name": 2}  # the rule that has this selector
    (document["ports"][rule_with[key]] if key in rule_with else document)[key] = value
    try:
        check_config(parse_config(yaml.safe_dump(document, allow_unicode=True), "site.yaml"))
    except ConfigError as err:
        check_error(err, "site.yaml")
        assert key in err.key, str(err)


yaml_damage = st.sampled_from(["", ":", " ", "\n", "\t", "-", "[", "]", "{", "}", ",", "&a", "*a", "*b", "!!", "!x",
                               "?", "'", '"', "#", "|", ">", "%", "@", "`", "\\", "\x00", "\x85", "\ufeff", "---",
                               "<<: *a", "\u2028", "é"])


@SETTINGS
@given(st.sampled_from(seeds()), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3), yaml_damage),
                                          min_size=1, max_size=4))
def test_damaged_yaml_text_gives_config_or_a_clear_error(seed, edits):
    text = seed.decode()
    for position, removed, inserted in edits:
        position %= len(text) + 1
        text = text[:position] + inserted + text[position + removed:]
    with deadline(10, "parsing damaged YAML"):
        try:
            check_config(parse_config(text, "site.yaml"))
        except ConfigError as err:
            check_error(err, "site.yaml")


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.sampled_from(seeds()).flatmap(
    lambda seed: st.tuples(st.just(seed), st.integers(0, len(seed)), st.binary(max_size=8)).map(
        lambda cut: cut[0][:cut[1]] + cut[2] + cut[0][cut[1]:]))))
def test_raw_files_through_the_atheris_check(data):
    """load_config on a file, and parse_config on its text, agree; the error is clear (config_target)."""
    with deadline(10, "loading one file"):
        one_input(data)


def test_an_alias_bomb_is_bounded():
    """Nine levels of ten aliases each: a billion leaves if anything walked them."""
    lines = ["bomb: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"bomb{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    anchors = "\n".join(lines) + "\n"
    for tail in ("targets: *a8\nports: [{name: eth0}]", "targets: [192.0.2.1]\nports: *a8",
                 "targets: [192.0.2.1]\nports: [{name: eth0, sampling: *a8}]"):
        with deadline(10, "an alias bomb"), pytest.raises(ConfigError) as info:
            parse_config(anchors + tail, "bomb.yaml")
        check_error(info.value, "bomb.yaml")


HEAD = "targets: [192.0.2.1]\nports: [{name: eth0}]\n"


@pytest.mark.parametrize("text", [
    HEAD + "agent: " + "x" * 5000, HEAD + "control_socket: /" + "c" * 5000, HEAD + "agent: !" + "t" * 5000 + " 1",
    "ports: [{name: eth0}]\ntargets: [" + "h" * 3000 + "]", "targets: [192.0.2.1]\nports: [{switch_id: '" + "z" * 3000 + "'}]",
])
def test_huge_values_are_quoted_cut(text):
    with pytest.raises(ConfigError) as info:
        parse_config(text + "\n", "big.yaml")
    check_error(info.value, "big.yaml")
    assert len(info.value.reason) <= ERROR_MAX // 2, str(info.value)


def test_a_file_over_the_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# " + b"x" * MAX_FILE + b"\n")
    with pytest.raises(ConfigError, match=f"larger than {MAX_FILE} bytes"):
        load_config(str(path))
    with deadline(10, "reading /dev/zero"), pytest.raises(ConfigError, match="larger than"):
        load_config("/dev/zero")  # endless: only a bounded read ends


def test_a_file_at_the_limit_is_read_whole(tmp_path):
    path = tmp_path / "large.yaml"
    body = b"targets: [192.0.2.1]\nports:\n  - name: eth0\n"
    path.write_bytes(body + b"#" * (MAX_FILE - len(body) - 1) + b"\n")
    started = time.monotonic()
    assert load_config(str(path)).ports[0].name == "eth0"
    assert time.monotonic() - started < 20  # bounded: the limit keeps even the largest file within seconds
