"""tc.install's answers to the kernel's refusals, with an rtnetlink stand-in: a race is told from a failure."""

from __future__ import annotations

import errno

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWTFILTER

from hwsflow.linux import tc

SPEC = tc.FilterSpec(ifindex=7, ifname="vport1", direction="ingress", rate=1, group=3000, trunc=128)


class Kernel:
    """Refuses the filter with `code`; has an ingress qdisc or none; dumps no filter."""

    def __init__(self, code: int, qdisc: str | None) -> None:
        self.code = code
        self.qdisc = qdisc

    def nlm_request(self, msg, msg_type, flags):
        if msg_type == RTM_NEWTFILTER:
            raise NetlinkError(self.code, "refused")
        return []  # dumps: no filter at all

    def get_qdiscs(self, index):
        if self.qdisc is None:
            return []
        qdisc = {"parent": tc.TC_H_INGRESS}

        class Msg(dict):
            def get_attr(self, name):
                return "ingress" if name == "TCA_KIND" else None

        return [Msg(qdisc)]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOENT])
def test_a_qdisc_deleted_under_the_filter_being_added_is_a_race_retried_quietly(code):
    with pytest.raises(tc.FilterVanished, match="vport1: the qdisc under the ingress sample filter was deleted"):
        tc.install(Kernel(code, qdisc=None), SPEC)


def test_a_refusal_with_the_qdisc_in_place_is_a_failure_that_names_the_port():
    with pytest.raises(tc.TcError, match="port vport1: cannot add the ingress sample filter") as raised:
        tc.install(Kernel(errno.EOPNOTSUPP, qdisc="ingress"), SPEC)
    assert not isinstance(raised.value, tc.FilterVanished)


class Recorder(Kernel):
    """Remembers the dump requests it was sent."""

    def __init__(self) -> None:
        super().__init__(errno.EINVAL, qdisc="ingress")
        self.dumps: list[int] = []

    def nlm_request(self, msg, msg_type, flags):
        if msg_type != RTM_NEWTFILTER:
            self.dumps.append(msg["info"])
        return super().nlm_request(msg, msg_type, flags)


def test_reading_hwsflows_filter_back_dumps_its_priority_alone():
    """Not the port's every filter: Open vSwitch can have thousands of flower rules there, at 2 and up."""
    kernel = Recorder()
    spec = tc.FilterSpec(ifindex=7, ifname="vport1", direction="ingress", rate=1, group=3000, trunc=128, priority=9)
    assert tc.read_filter(kernel, spec) is None
    assert [info >> 16 for info in kernel.dumps] == [9]
