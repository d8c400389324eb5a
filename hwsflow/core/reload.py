"""What a reload changes: the decisions the agent takes between the running config and a new one.

Pure: the agent reads the new file, asks plan_reload what to do, and does it;
collectors and the datagram sequence carry over by the rules here.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwsflow.core.config import Config, global_changes


@dataclass(frozen=True)
class ReloadPlan:
    changed: tuple[str, ...]  # the top-level keys that differ (config.GLOBAL_KEYS order)
    rcvbuf: int | None  # set the psample socket's receive buffer to this; None: unchanged
    regroup: bool  # group_base moved: every port starts afresh on new groups
    control_socket_kept: str | None  # a control_socket change waits for a restart: the one still in use
    metrics: bool = False  # the metrics endpoint starts, moves or stops

    def summary(self, path: str) -> str:
        return f"reloaded {path}" + (f" (changed: {', '.join(self.changed)})" if self.changed else "")


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """What applying new over old takes.  Port rules are not in it: the agent reconciles every port against
    the new config, and only the ports whose plan differs are touched."""
    changed = tuple(global_changes(old, new))
    return ReloadPlan(
        changed=changed,
        rcvbuf=new.rcvbuf if "rcvbuf" in changed else None,
        regroup="group_base" in changed,
        control_socket_kept=old.control_socket if "control_socket" in changed else None,
        metrics="metrics" in changed,
    )


@dataclass(frozen=True)
class AgentIdentity:
    """What a collector tells one agent's datagrams apart by."""

    address: str
    sub_agent_id: int


def sequence_carries(old: AgentIdentity | None, new: AgentIdentity) -> bool:
    """Whether the datagram sequence goes on after new output replaces old: only for the same agent, to
    a collector a new (address, sub-agent) is a new agent whose sequence starts at 1."""
    return old == new


@dataclass(frozen=True)
class CollectorCounts:
    """What a collector has counted, kept across a reload for a target the new config keeps."""

    sent: int
    errors: int
    last_error: str


def carried_counts(old: CollectorCounts | None, fresh_error: str, resolved: bool) -> CollectorCounts | None:
    """The counts a collector starts from after a reload: the old collector's of the same target, if any.
    Its old last error is kept only when the new collector can send: while it waits (its name does not
    resolve now) why it waits says more than an old send error."""
    if old is None:
        return None
    return CollectorCounts(old.sent, old.errors, old.last_error if resolved else fresh_error)
