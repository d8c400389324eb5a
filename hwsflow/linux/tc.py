"""Install, read back and remove hwsflow's matchall + sample filter on a port, over rtnetlink.

Rules this module keeps (REFERENCE sections 2 and 4):
- the sample action's control verdict is TC_ACT_UNSPEC ("continue"), so filters
  at later priorities, Open vSwitch's flower rules among them, still run;
- an existing ingress or clsact qdisc is reused; only a clsact that hwsflow
  created itself is ever removed again;
- hwsflow's filters carry an action cookie starting with COOKIE_MAGIC, and only
  filters carrying it are replaced or deleted.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELACTION, RTM_DELTFILTER, RTM_GETACTION, RTM_GETTFILTER, RTM_NEWACTION, RTM_NEWTFILTER,
)

from hwsflow.core.model import DIRECTIONS, Direction, Offload
from hwsflow.wire import tc_nla
from hwsflow.wire.tc_actions import ActionCounter, parse_action_dump
from hwsflow.wire.netlink import NLMSG_DONE, NLMSG_ERROR, NLMSG_HDR, NLMSGERR, iter_messages
from hwsflow.wire.tc_nla import TC_ACT_UNSPEC, TcaMsg, TcMsg


ETH_P_ALL = 0x0003
TC_H_INGRESS = 0xFFFFFFF1  # ingress/clsact qdisc parent (handle ffff:)
# filter parents inside the clsact/ingress block, as `tc filter ... ingress|egress` uses them
FILTER_PARENT: dict[Direction, int] = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}

COOKIE_MAGIC = b"hwsflow\x01"  # 8 bytes, then the psample group (u32, big-endian)
_COOKIE_TAIL = struct.Struct(">I")

_OFFLOAD_FLAGS: dict[str, int] = {
    "auto": 0,  # the driver decides; a refusal leaves the filter software-only (NOT_IN_HW)
    "required": tc_nla.TCA_CLS_FLAGS_SKIP_SW,  # fail loudly rather than sample in software
    "software": tc_nla.TCA_CLS_FLAGS_SKIP_HW,
}

tc_nla.register()


class TcError(Exception):
    """A tc operation on a port failed; the message names the port and what to do."""


class PriorityTaken(TcError):
    """Another program's filter holds the priority hwsflow's filter needs: hwsflow leaves it alone
    and waits for the priority to be free (a filter deletion there is the cue to try again)."""


class FilterVanished(TcError):
    """The filter was gone when read back: the qdisc under it was replaced meanwhile (Open vSwitch does
    at port initialisation), a race a later attempt wins."""


@dataclass(frozen=True)
class FilterSpec:
    """What hwsflow wants on one port and direction."""

    ifindex: int
    ifname: str
    direction: Direction
    rate: int
    group: int
    trunc: int
    priority: int = 1
    chain: int = 0
    offload: Offload = "auto"

    @property
    def cookie(self) -> bytes:
        return make_cookie(self.group)


@dataclass(frozen=True)
class FilterState:
    """One matchall + sample filter as the kernel reports it."""

    ifindex: int
    direction: Direction
    priority: int
    chain: int
    handle: int
    protocol: int
    rate: int
    group: int
    trunc: int
    verdict: int
    cookie: bytes
    in_hw: bool | None  # None: the kernel reported neither IN_HW nor NOT_IN_HW
    packets: int  # packets that reached the sample action (software + hardware)
    skip: int = 0  # the SKIP_SW / SKIP_HW flags it was installed with
    index: int = 0  # the sample action's index: what an in-place rate change names

    @property
    def ours(self) -> bool:
        return is_our_cookie(self.cookie)


def make_cookie(group: int) -> bytes:
    return COOKIE_MAGIC + _COOKIE_TAIL.pack(group)


def is_our_cookie(cookie: bytes | None) -> bool:
    return cookie is not None and cookie.startswith(COOKIE_MAGIC)


def open_rtnl() -> IPRoute:
    """An rtnetlink socket whose filter messages decode with hwsflow's tcmsg (chain, cookie, flags)."""
    ipr = IPRoute()
    # pyroute2 0.9.7's sync nlm_request reads this key, which IPRoute never sets
    ipr.status["nlm_generator"] = False
    for msg_type in (RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER):
        ipr.marshal.msg_map[msg_type] = TcMsg  # per-socket table: nothing global changes
    return ipr


# ---------------------------------------------------------------- messages (pure)


def _tc_info(priority: int, protocol: int = ETH_P_ALL) -> int:
    return (priority << 16) | socket.htons(protocol)


def build_filter_msg(spec: FilterSpec) -> TcMsg:
    """The RTM_NEWTFILTER body for spec; byte-identical to iproute2's `tc filter add ... matchall action sample`."""
    action = {
        "kind": "sample",
        "rate": spec.rate,
        "group": spec.group,
        "trunc": spec.trunc,
        "verdict": TC_ACT_UNSPEC,
        "cookie": spec.cookie,
    }
    options: list[list[Any]] = [["TCA_MATCHALL_ACT", tc_nla.action_list_attrs([action])]]
    flags = _OFFLOAD_FLAGS[spec.offload]
    if flags:
        options.append(["TCA_MATCHALL_FLAGS", flags])
    msg = TcMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = spec.ifindex
    msg["handle"] = 0
    msg["parent"] = FILTER_PARENT[spec.direction]
    msg["info"] = _tc_info(spec.priority)
    msg["attrs"] = [["TCA_KIND", "matchall"], ["TCA_OPTIONS", {"attrs": options}]]
    if spec.chain:
        msg["attrs"].append(["TCA_CHAIN", spec.chain])
    return msg


def build_action_msg(spec: FilterSpec, index: int) -> TcaMsg:
    """The RTM_NEWACTION body that sets the sample action `index` to spec's rate, group and trunc, verdict and
    cookie as hwsflow installs them; byte-identical to iproute2's `tc actions change action sample rate N
    group G trunc T continue index I cookie C`."""
    action = {"kind": "sample", "rate": spec.rate, "group": spec.group, "trunc": spec.trunc,
              "verdict": TC_ACT_UNSPEC, "cookie": spec.cookie, "index": index}
    msg = TcaMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["attrs"] = [["TCA_ROOT_TAB", tc_nla.action_list_attrs([action])]]
    return msg


def _filter_key_msg(ifindex: int, direction: Direction, priority: int = 0, chain: int | None = None) -> TcMsg:
    msg = TcMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = ifindex
    msg["handle"] = 0
    msg["parent"] = FILTER_PARENT[direction]
    msg["info"] = _tc_info(priority) if priority else 0
    msg["attrs"] = []
    if chain is not None:
        msg["attrs"].append(["TCA_CHAIN", chain])
    return msg


def parse_filter(msg: TcMsg, direction: Direction) -> FilterState | None:
    """A dumped filter as FilterState if it is matchall with a sample action, else None."""
    if msg.get_attr("TCA_KIND") != "matchall":
        return None
    options = msg.get_attr("TCA_OPTIONS")
    if options is None or options.get_attr("TCA_MATCHALL_ACT") is None:
        return None  # the dump of a new filter's first message can lack options
    action = options.get_attr("TCA_MATCHALL_ACT").get_attr("TCA_ACT_PRIO_1")
    if action is None or action.get_attr("TCA_ACT_KIND") != "sample":
        return None
    sample = action.get_attr("TCA_ACT_OPTIONS")
    flags = options.get_attr("TCA_MATCHALL_FLAGS") or 0
    in_hw: bool | None = None
    if flags & tc_nla.TCA_CLS_FLAGS_IN_HW:
        in_hw = True
    elif flags & tc_nla.TCA_CLS_FLAGS_NOT_IN_HW:
        in_hw = False
    info = msg["info"]
    return FilterState(
        ifindex=msg["index"],
        direction=direction,
        priority=info >> 16,
        chain=msg.get_attr("TCA_CHAIN") or 0,
        handle=msg["handle"],
        protocol=socket.ntohs(info & 0xFFFF),
        rate=sample.get_attr("TCA_SAMPLE_RATE") or 0,
        group=sample.get_attr("TCA_SAMPLE_PSAMPLE_GROUP") or 0,
        trunc=sample.get_attr("TCA_SAMPLE_TRUNC_SIZE") or 0,
        verdict=sample.get_attr("TCA_SAMPLE_PARMS")["action"],
        cookie=action.get_attr("TCA_ACT_COOKIE") or b"",
        in_hw=in_hw,
        packets=_action_packets(action),
        skip=flags & (tc_nla.TCA_CLS_FLAGS_SKIP_SW | tc_nla.TCA_CLS_FLAGS_SKIP_HW),
        index=sample.get_attr("TCA_SAMPLE_PARMS")["index"],
    )


def _action_packets(action: tc_nla.TcAction) -> int:
    stats = action.get_attr("TCA_ACT_STATS")
    if stats is None:
        return 0
    # PKT64 follows BASIC when the 32-bit packets field is too small
    pkt64: int | None = stats.get_attr("TCA_STATS_PKT64")
    if pkt64 is not None:
        return pkt64
    basic = stats.get_attr("TCA_STATS_BASIC")
    return basic["packets"] if basic is not None else 0


def describe_holder(kind: str | None, actions: list[str]) -> str:
    """The foreign filter at hwsflow's priority, in words (after "another program's"), as holder_of() found it."""
    what = f"{kind or 'unknown'} filter"
    if actions:
        what += " with a " + " + ".join(actions) + " action" + ("s" if len(actions) > 1 else "")
    return what


def priority_taken_message(spec: FilterSpec, kind: str | None, actions: list[str]) -> str:
    """Why the port is not sampled and what the operator can change, naming the filter in the way."""
    head = (f"port {spec.ifname}: {spec.direction} priority {spec.priority} is held by another program's "
            f"{describe_holder(kind, actions)}; hwsflow leaves it alone and samples again once the priority is free")
    if kind == "matchall" and "police" in actions:
        # OVS reserves priority 1 for its policer, and its flower rules (2 and up) end classification:
        # no other priority sees the traffic OVS forwards, so only removing the policer helps there
        return (f"{head}. It looks like Open vSwitch's ingress policer: remove it "
                f"(`ovs-vsctl set interface {spec.ifname} ingress_policing_rate=0`) to sample this port, "
                "or set another `priority` for it if no filter ahead of that one ends classification")
    return f"{head}. Set another `priority` for this port in hwsflow's config, or remove that filter"


# ---------------------------------------------------------------- operations (I/O)


def _port_error(ifname: str, what: str, err: NetlinkError) -> TcError:
    detail = getattr(err, "extra_code", None)
    reason = err.args[1] if len(err.args) > 1 else str(err)
    hint = ""
    if err.code == errno.ENOENT and "classifier" in str(reason).lower():
        hint = " (is the cls_matchall module available? try `modprobe cls_matchall act_sample`)"
    text = f"port {ifname}: {what}: {reason} (errno {err.code}){hint}"
    return TcError(f"{text}, {detail}" if detail else text)


def find_clsact_kind(ipr: IPRoute, ifindex: int) -> str | None:
    """'ingress', 'clsact' or None: which qdisc owns ffff: on the port."""
    for qdisc in ipr.get_qdiscs(index=ifindex):
        if qdisc["parent"] == TC_H_INGRESS:
            kind: str | None = qdisc.get_attr("TCA_KIND")
            return kind
    return None


def ensure_qdisc(ipr: IPRoute, ifindex: int, ifname: str, direction: Direction) -> bool:
    """Make sure the port has a qdisc that can hold filters for direction; True when hwsflow created it."""
    kind = find_clsact_kind(ipr, ifindex)
    if kind == "clsact" or (kind == "ingress" and direction == "ingress"):
        return False
    if kind == "ingress":
        raise TcError(
            f"port {ifname}: egress sampling is unavailable: the port has a plain `ingress` qdisc "
            "(Open vSwitch creates one), and egress filters need `clsact`; hwsflow never replaces "
            "another program's qdisc"
        )
    if kind is not None:
        raise TcError(f"port {ifname}: unexpected qdisc {kind!r} at ffff:")
    try:
        ipr.tc("add", "clsact", index=ifindex)
    except NetlinkError as err:
        if err.code == errno.EEXIST:  # another program raced us to it: reuse theirs
            return False
        raise _port_error(ifname, "cannot add a clsact qdisc", err) from err
    return True


def _filter_messages(ipr: IPRoute, ifindex: int, direction: Direction, priority: int = 0) -> list[TcMsg]:
    """Every filter of any kind on the port and direction, as the kernel dumps them; with a priority, only
    the filters of protocol `all` there (the kernel leaves the others out of the dump)."""
    request = _filter_key_msg(ifindex, direction, priority)
    replies = ipr.nlm_request(request, RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP)
    return [msg for msg in replies if msg["header"]["type"] == RTM_NEWTFILTER]


def dump_filters(ipr: IPRoute, ifindex: int, direction: Direction, priority: int = 0) -> list[FilterState]:
    """Every matchall + sample filter on the port and direction (at that priority, if one is given),
    hwsflow's or not."""
    if direction == "egress" and find_clsact_kind(ipr, ifindex) != "clsact":
        # a plain ingress qdisc resolves every parent to its one block: an "egress" dump there
        # would list the ingress filters, and deleting them as egress ones would remove those
        return []
    try:
        messages = _filter_messages(ipr, ifindex, direction, priority)
    except NetlinkError as err:
        if err.code in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
            return []  # no qdisc (yet) or no such port: nothing installed
        raise
    states = (parse_filter(msg, direction) for msg in messages)
    return [state for state in states if state is not None]


def own_filters(ipr: IPRoute, ifindex: int, direction: Direction) -> list[FilterState]:
    """hwsflow's filters on the port and direction, whatever their priority, chain or settings."""
    return [state for state in dump_filters(ipr, ifindex, direction) if state.ours]


def read_filter(ipr: IPRoute, spec: FilterSpec) -> FilterState | None:
    """hwsflow's filter for spec's port, direction, priority and chain, if the kernel has it.  Only that
    priority is dumped: heals and pool re-syncs do not parse the thousands of flower rules Open vSwitch can
    have on the port."""
    for state in dump_filters(ipr, spec.ifindex, spec.direction, spec.priority):
        if state.ours and state.priority == spec.priority and state.chain == spec.chain:
            return state
    return None


def action_dump_msg() -> TcaMsg:
    """RTM_GETACTION's body for a dump of every sample action (`tc actions list action sample`)."""
    msg = TcaMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["attrs"] = [["TCA_ROOT_TAB", {"attrs": [["TCA_ACT_PRIO_1", {"attrs": [["TCA_ACT_KIND", "sample"]]}]]}]]
    return msg


class BackoffTc:
    """Back-off's own rtnetlink socket, used from the event loop itself: one dump of every sample action's counter
    a tick, and the in-place rate changes.  Calls handed to the rtnetlink worker thread waited seconds under a
    flood that kept the agent busy (measured in the VM); these are short, blocking, and wait for nothing else.
    pyroute2 only encodes and decodes the messages here: its sockets cannot run inside a running event loop."""

    TIMEOUT = 2.0  # s the kernel has to answer one request; it answers in microseconds

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self.answered_at = 0.0  # time.monotonic() of the last request's answer

    def _request(self, msg: TcaMsg | TcMsg, msg_type: int, flags: int) -> list[bytes]:
        """Send one request; every reply message but DONE and the ACK, as bytes.  NetlinkError for an error reply."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
            self._sock.settimeout(self.TIMEOUT)
            self._sock.bind((0, 0))
        self._seq += 1
        msg["header"]["type"], msg["header"]["flags"], msg["header"]["sequence_number"] = msg_type, flags, self._seq
        msg.encode()
        sent = time.monotonic()
        self._sock.send(msg.data)
        replies: list[bytes] = []
        self.answered_at = 0.0
        while True:
            data = self._sock.recv(1 << 20)
            # when the kernel read its counters, about: before decoding, which can take long on a busy host
            self.answered_at = self.answered_at or (sent + time.monotonic()) / 2
            for reply_type, start, stop in iter_messages(data, len(data)):
                if NLMSG_HDR.unpack_from(data, start)[3] != self._seq:
                    continue  # an answer to an earlier request that timed out
                if reply_type == NLMSG_DONE:
                    return replies
                if reply_type == NLMSG_ERROR:
                    code = -NLMSGERR.unpack_from(data, start + NLMSG_HDR.size)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return replies  # the ACK
                replies.append(bytes(data[start:stop]))
            if not flags & NLM_F_DUMP and replies:
                return replies

    def counters(self) -> tuple[dict[int, ActionCounter], float]:
        """Every sample action's counter by index, and the time.monotonic() they were read at."""
        try:
            replies = self._request(action_dump_msg(), RTM_GETACTION, NLM_F_REQUEST | NLM_F_DUMP)
        except NetlinkError as err:
            if err.code in (errno.EINVAL, errno.ENOENT):  # act_sample not loaded: no action at all
                return {}, time.monotonic()
            raise
        found: dict[int, ActionCounter] = {}
        for raw in replies:  # walked, not decoded by pyroute2: this blocks the event loop (tc_actions says why)
            found.update((action.index, action) for action in parse_action_dump(raw))
        return found, self.answered_at

    def _read_filter(self, spec: FilterSpec) -> FilterState | None:
        replies = self._request(_filter_key_msg(spec.ifindex, spec.direction), RTM_GETTFILTER,
                                NLM_F_REQUEST | NLM_F_DUMP)
        for raw in replies:
            msg = TcMsg(raw)
            msg.decode()
            state = parse_filter(msg, spec.direction)
            if state is not None and state.ours and state.priority == spec.priority and state.chain == spec.chain:
                return state
        return None

    def change_rate(self, spec: FilterSpec, index: int) -> FilterState:
        """Set the rate of hwsflow's installed sample action `index` to spec.rate in place (RTM_NEWACTION with
        NLM_F_REPLACE): the same action, bound to the same filter, so its packet counter, the port's pool and
        sampling go on without a gap.  act_sample's init keeps the action's statistics on a replace and takes
        the new rate under the action's lock (kernels 4.11 on, so 5.14 to 6.12 alike).

        Raises FilterVanished when the filter is no longer there afterwards (another program deleted it
        meanwhile); a standalone action the replace may then have created is deleted again.
        """
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE  # no NLM_F_CREATE: a change, as far as tc lets one ask
        try:
            self._request(build_action_msg(spec, index), RTM_NEWACTION, flags)
        except NetlinkError as err:
            raise _port_error(spec.ifname, f"cannot change the {spec.direction} sample rate to {spec.rate}",
                              err) from err
        state = self._read_filter(spec)
        if state is None or state.index != index:
            self._delete_unbound_action(index)
            raise FilterVanished(f"port {spec.ifname}: the {spec.direction} sample filter was gone when its rate "
                                 "was changed (another program deleted it)")
        return state

    def _delete_unbound_action(self, index: int) -> None:
        """Delete sample action `index` if no filter holds it (the kernel refuses to delete a bound one)."""
        msg = TcaMsg()
        msg["family"] = socket.AF_UNSPEC
        msg["attrs"] = [["TCA_ROOT_TAB", {"attrs": [["TCA_ACT_PRIO_1", {"attrs": [
            ["TCA_ACT_KIND", "sample"], ["TCA_ACT_INDEX", index]]}]]}]]
        try:
            self._request(msg, RTM_DELACTION, NLM_F_REQUEST | NLM_F_ACK)
        except NetlinkError as err:
            if err.code not in (errno.ENOENT, errno.EINVAL, errno.EPERM):  # gone, or bound: not orphaned either way
                raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _delete(ipr: IPRoute, state: FilterState) -> None:
    msg = _filter_key_msg(state.ifindex, state.direction, state.priority, state.chain)
    msg["handle"] = state.handle
    msg["info"] = _tc_info(state.priority, state.protocol)
    msg["attrs"].append(["TCA_KIND", "matchall"])
    try:
        ipr.nlm_request(msg, RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK)
    except NetlinkError as err:
        if err.code not in (errno.ENOENT, errno.EINVAL):  # already gone
            raise


def matches(state: FilterState, spec: FilterSpec) -> bool:
    """Whether an installed filter already is exactly what spec asks for (so it can be kept)."""
    return (state.ours and state.cookie == spec.cookie and state.priority == spec.priority
            and state.chain == spec.chain and state.protocol == ETH_P_ALL and state.rate == spec.rate
            and state.group == spec.group and state.trunc == spec.trunc and state.verdict == TC_ACT_UNSPEC
            and state.skip == _OFFLOAD_FLAGS[spec.offload])


def own_groups(ipr: IPRoute, ifindex: int, direction: Direction) -> list[int]:
    """Groups of hwsflow's filters already on the port and direction (left by an earlier run)."""
    return [state.group for state in own_filters(ipr, ifindex, direction)]


def install(ipr: IPRoute, spec: FilterSpec) -> tuple[FilterState, bool]:
    """Make spec's filter the only hwsflow filter on its port and direction: (its state, adopted).

    A filter of ours that already is exactly spec is adopted, so that sampling goes on without a
    gap (after a restart, a reload, or a reconcile that finds everything in place); any other
    filter of ours there, whatever its priority, is replaced: hwsflow never stacks filters.
    The port must already have its qdisc: call ensure_qdisc() first.
    """
    keep: FilterState | None = None
    for state in own_filters(ipr, spec.ifindex, spec.direction):
        if keep is None and matches(state, spec):
            keep = state
        else:
            _delete(ipr, state)
    if keep is not None:
        return keep, True
    try:
        ipr.nlm_request(build_filter_msg(spec), RTM_NEWTFILTER, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
    except NetlinkError as err:
        if err.code in (errno.EINVAL, errno.ENOENT) and find_clsact_kind(ipr, spec.ifindex) is None:
            # the qdisc found a moment ago is gone: its owner is re-creating it (Open vSwitch at port
            # initialisation), a race a later attempt wins
            raise FilterVanished(f"port {spec.ifname}: the qdisc under the {spec.direction} sample filter was "
                                 "deleted while the filter was being added (another program re-creating it)") from err
        raise _install_error(spec, err, ipr) from err
    added = read_filter(ipr, spec)
    if added is None:
        raise FilterVanished(f"port {spec.ifname}: the {spec.direction} sample filter vanished right after it was "
                             "added (another program replaced the qdisc under it)")
    return added, False


def holder_of(ipr: IPRoute, spec: FilterSpec) -> tuple[str | None, list[str]]:
    """The kind and action kinds of the filter at spec's priority and chain that is not hwsflow's."""
    try:
        messages = _filter_messages(ipr, spec.ifindex, spec.direction)
    except NetlinkError:
        return None, []
    for msg in messages:
        if msg["info"] >> 16 != spec.priority or (msg.get_attr("TCA_CHAIN") or 0) != spec.chain:
            continue
        kind = msg.get_attr("TCA_KIND")
        if kind != "matchall":
            return kind, []  # flower and the rest: their kind says enough
        options = msg.get_attr("TCA_OPTIONS")
        actions = options.get_attr("TCA_MATCHALL_ACT") if options is not None else None
        if actions is None:
            continue  # the bare head message the kernel sends before each filter's full one
        names = [action.get_attr("TCA_ACT_KIND") for _name, action in actions["attrs"]]
        return kind, [name for name in names if name]
    return None, []


def _install_error(spec: FilterSpec, err: NetlinkError, ipr: IPRoute) -> TcError:
    where = f"priority {spec.priority}, chain {spec.chain}"
    if err.code in (errno.EEXIST, errno.EINVAL):
        # EINVAL: a filter of another kind or protocol holds the priority (a priority has one of each)
        kind, actions = holder_of(ipr, spec)
        if kind is not None or err.code == errno.EEXIST:
            return PriorityTaken(priority_taken_message(spec, kind, actions))
    if spec.offload == "required" and err.code in (errno.EOPNOTSUPP, errno.EINVAL):
        return TcError(
            f"port {spec.ifname}: offload is `required` but the driver refused to offload the matchall "
            f"sample filter ({err}); use `offload: auto` to sample in software instead"
        )
    return _port_error(spec.ifname, f"cannot add the {spec.direction} sample filter ({where})", err)


def uninstall(ipr: IPRoute, spec: FilterSpec) -> bool:
    """Delete hwsflow's filter for spec (same port, direction, priority, chain, cookie); True if one was there."""
    for state in dump_filters(ipr, spec.ifindex, spec.direction):
        if state.cookie == spec.cookie and state.priority == spec.priority and state.chain == spec.chain:
            _delete(ipr, state)
            return True
    return False


def remove_own(ipr: IPRoute, ifindex: int, direction: Direction) -> int:
    """Delete every hwsflow filter on the port and direction (a leftover of an earlier run); how many."""
    states = own_filters(ipr, ifindex, direction)
    for state in states:
        _delete(ipr, state)
    return len(states)


def holds_only_own(ipr: IPRoute, ifindex: int) -> bool:
    """Whether the port's clsact qdisc holds hwsflow's filters and nothing else: then it is hwsflow's,
    made by a run that was killed, and goes when hwsflow's filters go."""
    if find_clsact_kind(ipr, ifindex) != "clsact":
        return False
    found = False
    for direction in DIRECTIONS:
        for msg in _filter_messages(ipr, ifindex, direction):
            if msg.get_attr("TCA_OPTIONS") is None:
                continue  # the bare head message the kernel sends before each filter's full one
            state = parse_filter(msg, direction)
            if state is None or not state.ours:
                return False
            found = True
    return found


def remove_qdisc_if_unused(ipr: IPRoute, ifindex: int) -> bool:
    """Delete the clsact qdisc hwsflow created, but only while it holds no filter at all."""
    if find_clsact_kind(ipr, ifindex) != "clsact":
        return False
    for direction in DIRECTIONS:
        if _filter_messages(ipr, ifindex, direction):
            return False
    try:
        ipr.tc("del", "clsact", index=ifindex)
    except NetlinkError as err:
        if err.code not in (errno.ENOENT, errno.EINVAL):
            raise
    return True
