"""`sampling: auto`: the rate from the link's speed (hsflowd's rule), the config that asks for it, the
plan it gives each port, and what status says about it."""

from __future__ import annotations

import pytest

from hwsflow.core.config import ConfigError, parse_config
from hwsflow.core.control import Enable
from hwsflow.core.model import LinkInfo
from hwsflow.core.sampling import AUTO_MIN, RateChoice, auto_rate, choose_rate, describe
from hwsflow.core.selection import enabled_settings, plan_all
from hwsflow.core.status import render

from test_status import _status  # pytest puts tests/ on sys.path

G = 1_000_000_000


@pytest.mark.parametrize(("speed_bps", "rate"), [
    (100 * G, 100_000), (25 * G, 25_000), (10 * G, 10_000), (G, 1000), (100_000_000, 100),
    (10_000_000, AUTO_MIN), (2_500_000_000, 2500), (1_500_000, AUTO_MIN), (1_000_999_999, 1000),
])
def test_auto_rate_is_speed_over_a_million_whole_with_a_floor_of_100(speed_bps, rate):
    assert auto_rate(speed_bps) == rate


@pytest.mark.parametrize("speed_bps", [0, -1])
def test_no_speed_gives_no_auto_rate(speed_bps):
    assert auto_rate(speed_bps) is None
    assert choose_rate(400, True, speed_bps) == RateChoice(400, "auto-default")


def test_a_fixed_rate_ignores_the_speed():
    assert choose_rate(64, False, 10 * G) == RateChoice(64, "config")
    assert describe(choose_rate(64, False, 10 * G)) == "configured"
    assert describe(choose_rate(400, True, 10 * G)) == "auto: link speed 10000 Mbit/s"
    assert describe(choose_rate(400, True, 0)) == "auto: no link speed reported, the default rate"


CONFIG = """
targets: ["192.0.2.10:6343"]
sampling: 300
ports:
  - name: up0
    sampling: auto
  - name: fixed0
    sampling: 50
  - match: "rep*"
    sampling: auto
"""


def test_auto_ports_take_the_link_speed_or_the_configured_default():
    config = parse_config(CONFIG)
    plans = plan_all(config, {
        1: LinkInfo("up0", speed_bps=25 * G),
        2: LinkInfo("fixed0", speed_bps=25 * G),
        3: LinkInfo("rep0"),  # a VF representor: its driver reports no speed
        4: LinkInfo("rep1", speed_bps=10_000_000),
    }, {})
    assert {i: (p.settings.sampling, p.rate_from) for i, p in plans.items()} == {
        1: (25_000, "auto"), 2: (50, "config"), 3: (300, "auto-default"), 4: (AUTO_MIN, "auto")}


def test_top_level_auto_is_inherited_and_a_port_number_replaces_it():
    config = parse_config('targets: ["192.0.2.10:6343"]\nsampling: auto\nports:\n  - name: a\n'
                          '  - name: b\n    sampling: 7\n')
    assert config.defaults.sampling_auto and config.defaults.sampling == 400  # the built-in default stays
    plans = plan_all(config, {1: LinkInfo("a", speed_bps=G), 2: LinkInfo("b", speed_bps=G),
                              3: LinkInfo("a2")}, {})
    assert (plans[1].settings.sampling, plans[2].settings.sampling) == (1000, 7)


def test_a_speed_change_changes_the_plan_of_an_auto_port_only():
    config = parse_config(CONFIG)
    before = plan_all(config, {1: LinkInfo("up0", speed_bps=G), 2: LinkInfo("fixed0", speed_bps=G)}, {})
    after = plan_all(config, {1: LinkInfo("up0", speed_bps=10 * G), 2: LinkInfo("fixed0", speed_bps=10 * G)}, {})
    assert before[1] != after[1] and after[1].settings.sampling == 10_000
    assert before[2] == after[2]


def test_hwsflow_enable_gives_a_fixed_rate_over_an_auto_rule():
    config = parse_config(CONFIG)
    settings = enabled_settings(config, LinkInfo("up0", speed_bps=G), Enable(port="up0", rate=9))
    assert (settings.sampling, settings.sampling_auto) == (9, False)


@pytest.mark.parametrize(("value", "reason"), [
    ('"Auto"', "must be an integer from 1 to 4294967295 or auto (the rate from the link speed), got "),
    ("fast", "must be an integer from 1 to 4294967295 or auto"),
    ("0", "must be from 1 to 4294967295, got 0"),
    ("yes", "must be an integer from 1 to 4294967295"),
])
def test_a_bad_sampling_value_names_the_file_key_and_what_is_allowed(value, reason):
    text = f'targets: ["192.0.2.10:6343"]\nports:\n  - name: a\n    sampling: {value}\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.yaml")
    assert str(info.value).startswith(f"site.yaml: ports[0].sampling: {reason}"), str(info.value)


def test_status_says_where_an_auto_rate_comes_from():
    text = render(_status(rate=25_000, rate_from="auto: link speed 25000 Mbit/s"))
    assert "1-in-25000" in text and "  eno1: 1-in-25000 (auto: link speed 25000 Mbit/s)" in text
    assert "eno1: 1-in-10 (" not in render(_status(rate_from="configured"))
