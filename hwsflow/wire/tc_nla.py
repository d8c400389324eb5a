"""Netlink attribute layouts for the tc objects hwsflow uses, as pyroute2 nla classes.

pyroute2 0.9.7 has no act_sample, declares matchall's CLASSID and FLAGS as
big-endian (so skip_sw/skip_hw go out byte-swapped and are rejected), knows
neither TCA_ACT_COOKIE nor the 64-bit packet counters, and its tcmsg stops
before TCA_CHAIN.  The classes here are fresh (subclassing pyroute2's would
reuse their compiled attribute tables) and are registered in pyroute2's own
plugin tables by register(), so every pyroute2 path that meets a matchall
filter or a sample action decodes it correctly.
"""

from __future__ import annotations

import types
from typing import Any

from pyroute2.netlink import NLA_F_NESTED, nla, nlmsg
from pyroute2.netlink.rtnl import tcmsg as pyroute2_tcmsg
from pyroute2.netlink.rtnl.tcmsg import common_act

# include/uapi/linux/pkt_cls.h
TC_ACT_UNSPEC = -1  # "continue": classification goes on to the next filter
TC_ACT_OK = 0
TC_ACT_PIPE = 3
TCA_CLS_FLAGS_SKIP_HW = 1
TCA_CLS_FLAGS_SKIP_SW = 2
TCA_CLS_FLAGS_IN_HW = 4
TCA_CLS_FLAGS_NOT_IN_HW = 8
TCA_ACT_MAX_PRIO = 32


class ActStats(nla):
    """TCA_ACT_STATS: gnet_stats, with the 64-bit packet counter of newer kernels."""

    nla_map = (
        (0, 'TCA_STATS_UNSPEC', 'none'),
        (1, 'TCA_STATS_BASIC', 'basic'),
        (2, 'TCA_STATS_RATE_EST', 'hex'),
        (3, 'TCA_STATS_QUEUE', 'hex'),
        (4, 'TCA_STATS_APP', 'hex'),
        (5, 'TCA_STATS_RATE_EST64', 'hex'),
        (6, 'TCA_STATS_PAD', 'hex'),
        (7, 'TCA_STATS_BASIC_HW', 'basic'),
        (8, 'TCA_STATS_PKT64', 'uint64'),
    )

    class basic(nla):
        # struct gnet_stats_basic: packets is only 32 bits, hence PKT64 above
        fields = (('bytes', 'Q'), ('packets', 'I'))


class SampleOptions(nla):
    """act_sample's TCA_ACT_OPTIONS (include/uapi/linux/tc_act/tc_sample.h)."""

    nla_flags = NLA_F_NESTED
    nla_map = (
        (0, 'TCA_SAMPLE_UNSPEC', 'none'),
        (1, 'TCA_SAMPLE_TM', 'hex'),
        (2, 'TCA_SAMPLE_PARMS', 'tc_gen'),
        (3, 'TCA_SAMPLE_RATE', 'uint32'),
        (4, 'TCA_SAMPLE_TRUNC_SIZE', 'uint32'),
        (5, 'TCA_SAMPLE_PSAMPLE_GROUP', 'uint32'),
        (6, 'TCA_SAMPLE_PAD', 'hex'),
    )

    class tc_gen(nla):
        fields = (
            ('index', 'I'),
            ('capab', 'I'),
            ('action', 'i'),
            ('refcnt', 'i'),
            ('bindcnt', 'i'),
        )


def _act_options_class(kind: str | None) -> type:
    plugin = common_act.plugins.get(kind or '')
    options: type = plugin.options if plugin is not None else nla.hex
    return options


class TcAction(nla):
    """One action of a filter's action list (TCA_ACT_*), cookie included."""

    nla_map = (
        (0, 'TCA_ACT_UNSPEC', 'none'),
        (1, 'TCA_ACT_KIND', 'asciiz'),
        (2, 'TCA_ACT_OPTIONS', 'get_act_options'),
        (3, 'TCA_ACT_INDEX', 'uint32'),
        (4, 'TCA_ACT_STATS', 'act_stats'),
        (5, 'TCA_ACT_PAD', 'hex'),
        (6, 'TCA_ACT_COOKIE', 'cdata'),
        (7, 'TCA_ACT_FLAGS', 'hex'),
        (8, 'TCA_ACT_HW_STATS', 'hex'),
        (9, 'TCA_ACT_USED_HW_STATS', 'hex'),
        (10, 'TCA_ACT_IN_HW_COUNT', 'uint32'),
    )
    act_stats = ActStats

    @staticmethod
    def get_act_options(self: nla, *argv: object, **kwarg: object) -> type:  # noqa: PLW0211 - pyroute2 passes the nla first
        return _act_options_class(self.get_attr('TCA_ACT_KIND'))


class ActionList(nla):
    """TCA_*_ACT: actions nested under attribute numbers 1..32, run in that order."""

    nla_map = tuple(
        (i, f'TCA_ACT_PRIO_{i}', 'tc_action') for i in range(TCA_ACT_MAX_PRIO + 1)
    )
    tc_action = TcAction


class MatchallOptions(nla):
    """cls_matchall's TCA_OPTIONS; CLASSID and FLAGS are host-order u32."""

    nla_map = (
        (0, 'TCA_MATCHALL_UNSPEC', 'none'),
        (1, 'TCA_MATCHALL_CLASSID', 'uint32'),
        (2, 'TCA_MATCHALL_ACT', 'action_list'),
        (3, 'TCA_MATCHALL_FLAGS', 'uint32'),
        (4, 'TCA_MATCHALL_PCNT', 'pcnt'),
        (5, 'TCA_MATCHALL_PAD', 'hex'),
    )
    action_list = ActionList

    class pcnt(nla):
        fields = (('rhit', 'Q'),)


def _tc_options_class(kind: str | None) -> type | None:
    plugin = pyroute2_tcmsg.plugins.get(kind or '')
    return getattr(plugin, 'options', None) if plugin is not None else None


class TcMsg(nlmsg):
    """struct tcmsg with every attribute up to TCA_EXT_WARN_MSG (pyroute2's stops at TCA_STAB)."""

    prefix = 'TCA_'
    fields = (
        ('family', 'B'),
        ('pad1', 'B'),
        ('pad2', 'H'),
        ('index', 'i'),
        ('handle', 'I'),
        ('parent', 'I'),
        ('info', 'I'),
    )
    nla_map = (
        (0, 'TCA_UNSPEC', 'none'),
        (1, 'TCA_KIND', 'asciiz'),
        (2, 'TCA_OPTIONS', 'get_options'),
        (3, 'TCA_STATS', 'hex'),
        (4, 'TCA_XSTATS', 'hex'),
        (5, 'TCA_RATE', 'hex'),
        (6, 'TCA_FCNT', 'hex'),
        (7, 'TCA_STATS2', 'hex'),
        (8, 'TCA_STAB', 'hex'),
        (9, 'TCA_PAD', 'hex'),
        (10, 'TCA_DUMP_INVISIBLE', 'flag'),
        (11, 'TCA_CHAIN', 'uint32'),
        (12, 'TCA_HW_OFFLOAD', 'uint8'),
        (13, 'TCA_INGRESS_BLOCK', 'uint32'),
        (14, 'TCA_EGRESS_BLOCK', 'uint32'),
        (15, 'TCA_DUMP_FLAGS', 'hex'),
        (16, 'TCA_EXT_WARN_MSG', 'asciiz'),
    )

    @staticmethod
    def get_options(self: nlmsg, *argv: object, **kwarg: object) -> type:  # noqa: PLW0211 - pyroute2 passes the nlmsg first
        # qdiscs and filters of other kinds keep pyroute2's own decoders
        return _tc_options_class(self.get_attr('TCA_KIND')) or nla.hex


class TcaMsg(nlmsg):
    """struct tcamsg: RTM_NEWACTION / RTM_DELACTION / RTM_GETACTION, the actions on their own (`tc actions`)."""

    prefix = 'TCA_ROOT_'
    fields = (
        ('family', 'B'),
        ('pad1', 'B'),
        ('pad2', 'H'),
    )
    nla_map = (
        (0, 'TCA_ROOT_UNSPEC', 'none'),
        (1, 'TCA_ROOT_TAB', 'action_list'),  # TCA_ACT_TAB
        (2, 'TCA_ROOT_FLAGS', 'hex'),
        (3, 'TCA_ROOT_COUNT', 'uint32'),
        (4, 'TCA_ROOT_TIME_DELTA', 'uint32'),
    )
    action_list = ActionList


def _sample_parameters(kwarg: dict[str, Any]) -> dict[str, Any]:
    """pyroute2 tc() API: {'kind': 'sample', 'rate': N, 'group': G, 'trunc': T, 'action': verdict}."""
    attrs: list[list[Any]] = [
        # index 0 lets the kernel pick one; an existing index with NLM_F_REPLACE changes that action in place
        ['TCA_SAMPLE_PARMS', {'index': kwarg.get('index', 0), 'action': kwarg.get('verdict', TC_ACT_UNSPEC)}],
        ['TCA_SAMPLE_RATE', kwarg['rate']],
        ['TCA_SAMPLE_PSAMPLE_GROUP', kwarg['group']],
    ]
    if kwarg.get('trunc'):
        attrs.append(['TCA_SAMPLE_TRUNC_SIZE', kwarg['trunc']])
    return {'attrs': attrs}


def _matchall_parameters(kwarg: dict[str, Any]) -> dict[str, Any]:
    """pyroute2 tc() API for matchall: actions as a list of {'kind': ..., ...} dicts."""
    attrs: list[list[Any]] = []
    actions = kwarg.get('action')
    if actions:
        attrs.append(['TCA_MATCHALL_ACT', action_list_attrs(actions)])
    if kwarg.get('classid') is not None:
        attrs.append(['TCA_MATCHALL_CLASSID', kwarg['classid']])
    if kwarg.get('flags') is not None:
        attrs.append(['TCA_MATCHALL_FLAGS', kwarg['flags']])
    return {'attrs': attrs}


def action_list_attrs(actions: list[dict[str, Any]]) -> dict[str, Any]:
    """Nested attributes for an action list; each dict has 'kind' and the plugin's keys, and may carry 'cookie'."""
    out: list[list[Any]] = []
    for prio, act in enumerate(actions, start=1):
        plugin = common_act.plugins[act['kind']]
        attrs: list[list[Any]] = [
            ['TCA_ACT_KIND', act['kind']],
            ['TCA_ACT_OPTIONS', plugin.get_parameters(act)],
        ]
        if act.get('cookie'):
            attrs.append(['TCA_ACT_COOKIE', bytes(act['cookie'])])
        out.append([f'TCA_ACT_PRIO_{prio}', {'attrs': attrs}])
    return {'attrs': out}


# pyroute2 looks plugins up by kind and reads these attributes from them
SAMPLE_PLUGIN = types.SimpleNamespace(options=SampleOptions, get_parameters=_sample_parameters)
MATCHALL_PLUGIN = types.SimpleNamespace(
    options=MatchallOptions,
    get_parameters=_matchall_parameters,
    fix_request=pyroute2_tcmsg.cls_matchall.fix_request,
)


def register() -> None:
    """Install the fixed matchall and the new sample action in pyroute2's plugin tables (idempotent)."""
    pyroute2_tcmsg.plugins['matchall'] = MATCHALL_PLUGIN
    common_act.plugins['sample'] = SAMPLE_PLUGIN
