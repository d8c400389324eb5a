"""When to heal a port whose sample filter another program deleted, and what the log says about it.

Open vSwitch deletes and re-creates the ingress qdisc at port initialisation,
and the filter hwsflow had on it goes with it.  hwsflow waits SETTLE after the
event, so that it reinstalls on the new qdisc rather than creating a clsact that
would make the other program's `qdisc add ingress` fail; when the qdisc deleted
was another program's, it waits for that program (RTM_NEWQDISC ends the wait)
up to QDISC_GRACE, then may create a clsact of its own.

A heal that fails is retried, with a growing delay: a filter that vanishes right
after it was added (the qdisc under it was replaced at that moment) is a race
hwsflow recovers from, said at INFO.  Only a port that stays unsampled for
STUCK_AFTER is an ERROR, once per condition, and its recovery is said too.

A heal can also find hwsflow's priority held by another program's filter (Open
vSwitch's ingress policer takes priority 1).  That is no race: the port is
BLOCKED, an ERROR at once (it stays unsampled until someone acts), said once per
condition; hwsflow tries again as soon as a filter at that priority is deleted
(the rtnetlink event, FREED_SETTLE later) and every BLOCKED_POLL in case an
event was lost.

An event that arrives while a heal of its port is under way (the heal began
before the deletion it reports) is not lost with that heal's outcome: the heal it
asks for still runs, and a retry or poll set by the outcome never puts it off.

Pure, one state machine per port in the manner of h11's _state.py: explicit
states, events, a transition table; the agent passes the time in, does the I/O,
and reports each outcome back.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from collections.abc import Mapping

from hwsflow.core.model import LogLine

SETTLE = 0.25  # s after a port lost its filter or qdisc before hwsflow adds to it again
QDISC_GRACE = 5.0  # s another program has to re-create the qdisc it deleted before hwsflow makes a clsact
HEAL_POLL = 0.1  # s between looks for that qdisc, besides the RTM_NEWQDISC event
RETRY_FIRST = 0.25  # s before the first retry of a heal that failed; doubled up to RETRY_MAX
RETRY_MAX = 5.0
STUCK_AFTER = 10.0  # s a port may stay unsampled through failed heals before that is an ERROR
BLOCKED_POLL = 5.0  # s between tries on a port whose priority another program holds, besides the events
# s from a filter deletion at a blocked port's priority to the try: at once, but for the moment another program
# takes between deleting its filter and adding the next (Open vSwitch re-applying a policer at a new rate)
FREED_SETTLE = 0.05


class HealState(enum.Enum):
    IDLE = "idle"  # nothing to do
    SETTLING = "settling"  # lost its filter: heal once the other program is done
    AWAITING_QDISC = "awaiting qdisc"  # another program's qdisc was deleted: wait for it to come back
    RETRYING = "retrying"  # the last heal failed
    BLOCKED = "blocked"  # another program's filter holds hwsflow's priority: wait for it to go


class HealEvent(enum.Enum):
    FILTER_LOST = "filter lost"  # hwsflow's filter, or the clsact qdisc under it, was deleted
    OWNER_QDISC_LOST = "owner qdisc lost"  # another program's ingress qdisc, hwsflow's filter on it, deleted
    QDISC_ADDED = "qdisc added"
    HEALED = "healed"  # every filter of the port is in place
    QDISC_MISSING = "qdisc missing"  # heal found no qdisc and may not create one yet
    FAILED = "failed"
    BLOCKED = "blocked"  # heal found another program's filter at hwsflow's priority


_S, _E = HealState, HealEvent
TRANSITIONS: Mapping[tuple[HealState, HealEvent], HealState] = {
    (_S.IDLE, _E.FILTER_LOST): _S.SETTLING,
    (_S.IDLE, _E.OWNER_QDISC_LOST): _S.AWAITING_QDISC,
    (_S.IDLE, _E.QDISC_ADDED): _S.IDLE,  # not one hwsflow waits for
    (_S.IDLE, _E.QDISC_MISSING): _S.AWAITING_QDISC,
    (_S.SETTLING, _E.FILTER_LOST): _S.SETTLING,
    (_S.SETTLING, _E.OWNER_QDISC_LOST): _S.AWAITING_QDISC,
    (_S.SETTLING, _E.QDISC_ADDED): _S.SETTLING,
    (_S.SETTLING, _E.QDISC_MISSING): _S.AWAITING_QDISC,
    (_S.AWAITING_QDISC, _E.FILTER_LOST): _S.AWAITING_QDISC,
    (_S.AWAITING_QDISC, _E.OWNER_QDISC_LOST): _S.AWAITING_QDISC,
    (_S.AWAITING_QDISC, _E.QDISC_ADDED): _S.AWAITING_QDISC,
    (_S.AWAITING_QDISC, _E.QDISC_MISSING): _S.AWAITING_QDISC,
    (_S.RETRYING, _E.FILTER_LOST): _S.RETRYING,
    (_S.RETRYING, _E.OWNER_QDISC_LOST): _S.AWAITING_QDISC,
    (_S.RETRYING, _E.QDISC_ADDED): _S.RETRYING,
    (_S.RETRYING, _E.QDISC_MISSING): _S.AWAITING_QDISC,
    (_S.BLOCKED, _E.FILTER_LOST): _S.SETTLING,  # the filter in the way may be the one that went
    (_S.BLOCKED, _E.OWNER_QDISC_LOST): _S.AWAITING_QDISC,
    (_S.BLOCKED, _E.QDISC_ADDED): _S.BLOCKED,
    (_S.BLOCKED, _E.QDISC_MISSING): _S.AWAITING_QDISC,
    **{(state, _E.HEALED): _S.IDLE for state in _S},
    **{(state, _E.FAILED): _S.RETRYING for state in _S},
    **{(state, _E.BLOCKED): _S.BLOCKED for state in _S},
}


@dataclass
class _Port:
    state: HealState = HealState.IDLE
    at: float | None = None  # when to heal next; None in IDLE
    qdisc_lost: float | None = None  # when another program deleted the qdisc hwsflow's filter was on
    failing_since: float | None = None  # first failure of the current run of failed heals
    delay: float = RETRY_FIRST
    reported: str | None = None  # the failure an ERROR has said, so it is said once
    heal_began: float | None = None  # when the heal under way began (due() or began()); None when none is


@dataclass(frozen=True)
class Due:
    ifindex: int
    may_create_qdisc: bool  # False while another program may still re-create the qdisc it deleted


class HealSchedule:
    """Per port: when to heal next, what a heal's outcome is worth saying."""

    def __init__(self) -> None:
        self._ports: dict[int, _Port] = {}

    def state(self, ifindex: int) -> HealState:
        port = self._ports.get(ifindex)
        return port.state if port is not None else HealState.IDLE

    def _fire(self, ifindex: int, event: HealEvent) -> _Port:
        port = self._ports.setdefault(ifindex, _Port())
        port.state = TRANSITIONS[port.state, event]
        return port

    # ------------------------------------------------------------ rtnetlink events

    def filter_lost(self, ifindex: int, now: float) -> None:
        # on a blocked port the filter deleted may be the one in the way: the priority is free, try at once
        settle = FREED_SETTLE if self.state(ifindex) is HealState.BLOCKED else SETTLE
        port = self._fire(ifindex, HealEvent.FILTER_LOST)
        # a burst of events: the first one counts; a retry or poll further off is brought forward
        port.at = now + settle if port.at is None else min(port.at, now + settle)

    def owner_qdisc_lost(self, ifindex: int, now: float) -> None:
        port = self._fire(ifindex, HealEvent.OWNER_QDISC_LOST)
        # during a heal it is a new loss, whatever the heal under way was waiting for: its owner gets its grace
        port.qdisc_lost = now if port.qdisc_lost is None or port.heal_began is not None else port.qdisc_lost
        port.at = now + SETTLE if port.at is None else port.at

    def qdisc_added(self, ifindex: int, now: float) -> None:
        if ifindex not in self._ports:
            return
        port = self._fire(ifindex, HealEvent.QDISC_ADDED)
        if port.state is HealState.AWAITING_QDISC:
            port.at = now  # the qdisc is back: reinstall on it at once

    def forget(self, ifindex: int) -> None:
        """The port is no longer watched."""
        self._ports.pop(ifindex, None)

    # ------------------------------------------------------------ what to do, and when

    def next_at(self) -> float | None:
        return min((p.at for p in self._ports.values() if p.at is not None), default=None)

    def pending(self) -> bool:
        return any(p.at is not None for p in self._ports.values())

    def due(self, now: float) -> list[Due]:
        """The ports to heal now, taken off the schedule until their outcome is reported."""
        result = []
        for ifindex, port in self._ports.items():
            if port.at is not None and port.at <= now:
                port.at, port.heal_began = None, now
                lost = port.qdisc_lost
                result.append(Due(ifindex, lost is None or now - lost >= QDISC_GRACE))
        return result

    def began(self, ifindex: int, now: float) -> None:
        """A heal the schedule did not ask for (the periodic full check) begins: events from now on ask for
        another one."""
        port = self._ports.setdefault(ifindex, _Port())
        port.at, port.heal_began = None, now

    def _asked_meanwhile(self, port: _Port) -> float | None:
        """When the heal an event asked for during the heal just ended is due; that heal is over."""
        asked = port.at if port.heal_began is not None else None
        port.heal_began = None
        return asked

    def waits_for_owner(self, ifindex: int) -> bool:
        """Whether the periodic full check must leave this port to its qdisc's owner for now."""
        return self.state(ifindex) is HealState.AWAITING_QDISC

    # ------------------------------------------------------------ outcomes

    def healed(self, ifindex: int, ifname: str) -> LogLine | None:
        port = self._ports.get(ifindex)
        if port is None:
            return None
        began = port.heal_began
        asked = self._asked_meanwhile(port)
        line = None if port.reported is None else LogLine(logging.INFO, f"port {ifname}: sampled again, every filter reinstalled")
        if asked is None:
            del self._ports[ifindex]
            return line
        # another program deleted the filter (or the qdisc) again while this heal ran: the heal that asked for
        # still comes, the qdisc's owner still gets its grace if it was the qdisc
        lost_meanwhile = port.qdisc_lost is not None and began is not None and port.qdisc_lost >= began
        port.state = HealState.AWAITING_QDISC if lost_meanwhile else HealState.SETTLING
        port.qdisc_lost = port.qdisc_lost if lost_meanwhile else None
        port.failing_since, port.reported, port.delay = None, None, RETRY_FIRST
        return line

    def qdisc_missing(self, ifindex: int, now: float) -> None:
        port = self._fire(ifindex, HealEvent.QDISC_MISSING)
        self._next(port, now + HEAL_POLL)
        if port.qdisc_lost is None:
            port.qdisc_lost = now

    def _next(self, port: _Port, at: float) -> None:
        """Heal again at `at`, or sooner where an event during the heal asked for it."""
        asked = self._asked_meanwhile(port)
        port.at = at if asked is None else min(at, asked)

    def blocked(self, ifindex: int, reason: str, now: float) -> LogLine | None:
        """Another program's filter holds the port's priority: an ERROR once per condition (reason says
        which filter and what to change), then quiet until it is healed; tried again on a filter deletion."""
        port = self._fire(ifindex, HealEvent.BLOCKED)
        self._next(port, now + BLOCKED_POLL)  # a filter deleted meanwhile may have freed the priority already
        port.qdisc_lost = None
        port.delay = RETRY_FIRST
        if port.failing_since is None:
            port.failing_since = now
        if port.reported == reason:
            return None
        port.reported = reason
        return LogLine(logging.ERROR, f"{reason}; the port stays unsampled until then")

    def failed(self, ifindex: int, reason: str, now: float) -> LogLine | None:
        """A heal could not reinstall a filter: retried; ERROR once the port has stayed unsampled too long."""
        port = self._fire(ifindex, HealEvent.FAILED)
        first = port.failing_since is None
        if first:
            port.failing_since, port.delay = now, RETRY_FIRST
        else:
            port.delay = min(port.delay * 2, RETRY_MAX)
        self._next(port, now + port.delay)
        port.qdisc_lost = None
        assert port.failing_since is not None
        if now - port.failing_since >= STUCK_AFTER:
            if port.reported == reason:
                return None
            port.reported = reason
            return LogLine(logging.ERROR, f"{reason}; the port stays unsampled, retrying every {RETRY_MAX:.0f} s")
        if first:
            return LogLine(logging.INFO, f"{reason}; retrying")
        return None
