"""The shared model: interface names as the kernel's dev_valid_name judges them, directions."""

from __future__ import annotations

import pytest

from hwsflow.core.model import DIRECTION_CHOICES, DIRECTIONS, LinkInfo, PortSelector, directions_of, is_ifname


@pytest.mark.parametrize("name", ["eth0", "enp4s0f0np0_pf0", "a" * 15, "é" * 7, "br-lan.10", "veth@1", "ovs-system"])
def test_names_the_kernel_accepts(name):
    assert is_ifname(name)


@pytest.mark.parametrize("name", [
    "", ".", "..", "a" * 16, "é" * 8,  # empty, the two directory names, 16 bytes with no room for the NUL
    "eth/0", "eth:0", "eth 0", "eth\t0", "eth\n", "eth\v0", "eth\f0", "eth\r0",  # '/', ':' and isspace()
    "\u00a0", "eà0",  # UTF-8 c2 a0 and c3 a0: the kernel's isspace() takes the byte 0xa0 for a space
    "\x01eth", "eth\x7f", "\ud800", "e\u2028",  # the kernel takes these; hwsflow shows names on one line
])
def test_names_refused(name):
    assert not is_ifname(name)


def test_a_selection_of_both_covers_each_sample_direction_once():
    assert DIRECTIONS == ("ingress", "egress") and DIRECTION_CHOICES == ("ingress", "egress", "both")
    assert directions_of("both") == DIRECTIONS
    assert directions_of("egress") == ("egress",)


def test_selectors_all_match():
    vf = LinkInfo("enp4s0f0_3", "00154d1234", "pf0vf3")
    assert PortSelector(None, "enp4s0f0_*", "00154d1234", "pf0vf*").selects(vf)
    assert not PortSelector(None, "enp4s0f0_*", "00154d1234", "p0").selects(vf)
    assert not PortSelector(None, None, None, "pf0vf*").selects(LinkInfo("eth0"))
    assert not PortSelector("ENP4S0F0_3", None, None, None).selects(vf)
