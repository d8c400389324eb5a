"""Sampling-rate back-off: which 1-in-N each filter runs at, so that the samples fit what the agent can take.

A host's samples arrive at the rate its traffic sets: a flood through a port
sampled 1-in-100 is hundreds of thousands of samples a second, and samples the
agent cannot take are lost in the kernel.  sFlow's answer is back-off: every
sample carries the rate it was taken at, so the agent may raise N under load
and collectors stay right.

The decision works on packets, not samples: each filter's packets per second
come from its tc action's packet counter, which counts every packet whatever
the rate, so the samples a rate would give (packets / N) are known before the
rate is set, and samples of the old rate still queued on the socket cannot
mislead it.  Once a tick:

- over the budget (`max_samples_per_s`, the agent's whole load, or a port's
  own one): N is raised on the filters that send the most (water-filling: the
  small ones keep their rate) until the load is BACKOFF_TARGET of the budget,
  leaving room for the traffic to grow without a second step;
- the kernel losing samples (socket overruns, GROUP_SEQ gaps) while the load
  fits the budget: the agent cannot take what the budget says on this host
  now (other processes have its CPU), so the budget is lowered to LOSS_CUT of
  the load for LOSS_MEMORY, and the same rule applies.  It takes losses on
  LOSS_TICKS ticks on end: a single burst (the agent stopped a moment) is no
  sign of a load it cannot take.  Loss after a change,
  until the agent reads samples of the new rate on every filter changed (at
  most LOSS_SETTLE), is the old rate's queue overflowing and is not counted;
- under RECOVER_BELOW of the budget for `hold` seconds on end: N steps back
  toward the configured rate, as far as keeps the load at BACKOFF_TARGET.

Between RECOVER_BELOW and 1 of the budget nothing changes: a step back puts
the load at BACKOFF_TARGET, inside that band, so steady traffic never moves a
rate up and down.  Every change carries its reason.

Pure, one state machine per filter (port and direction) in the manner of h11's
_state.py: explicit states, events, a transition table; the agent passes the
time and the counters in, applies the changes, and logs them.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hwsflow.core.model import U32_MAX, Direction, LogLine

BACKOFF_TARGET = 0.75  # of the budget: where a back-off puts the load
RECOVER_BELOW = 0.5  # of the budget: a load under this, held for `hold` seconds, lets rates step back
DEFAULT_HOLD = 20  # s; see README "Back-off"
DEFAULT_BUDGET = 50_000  # samples/s; see README "Back-off" (what `hwsflow bench` measured)
LOSS_SETTLE = 30.0  # s after a change at most that loss may still be the old rate's (no sample of the new one read)
LOSS_CUT = 0.5  # a loss at a load within the budget lowers the budget to this share of that load
LOSS_MEMORY = 600.0  # s a budget lowered by loss stays lowered
LOSS_MIN_LOAD = 100.0  # samples/s: below this, losses are not hwsflow's own samples' doing (foreign groups)
LOSS_TICKS = 2  # ticks on end with losses before they lower the budget: one burst (the agent stopped) is no load
IDLE_SHARE = 0.25  # of the budget: samples arriving under this, nothing backed off, no loss: the counters are not read
STEP_MIN = 0.75  # a step back must lower N to at most this share of it, or reach the configured rate
MIN_INTERVAL = 0.5  # s: counters read closer together than this (a late tick, then one on time) are not a rate

Key = tuple[int, Direction]  # (ifindex, direction): one filter, one psample group


class BackoffState(enum.Enum):
    CONFIGURED = "configured"  # the configured rate is in force
    BACKED_OFF = "backed off"  # a higher N is in force
    RECOVERING = "recovering"  # backed off, and the load has been under RECOVER_BELOW since calm_since


class BackoffEvent(enum.Enum):
    OVER = "over"  # the load is over the budget (or the kernel lost samples) and this filter's N is raised
    STEADY = "steady"  # between RECOVER_BELOW and the budget, or over it with this filter left as it is
    CALM = "calm"  # under RECOVER_BELOW of the budget
    STEPPED = "stepped"  # N stepped back, not yet to the configured rate
    RESTORED = "restored"  # the configured rate is in force again


_S, _E = BackoffState, BackoffEvent
TRANSITIONS: Mapping[tuple[BackoffState, BackoffEvent], BackoffState] = {
    (_S.CONFIGURED, _E.OVER): _S.BACKED_OFF,
    (_S.CONFIGURED, _E.STEADY): _S.CONFIGURED,
    (_S.CONFIGURED, _E.CALM): _S.CONFIGURED,
    (_S.BACKED_OFF, _E.OVER): _S.BACKED_OFF,
    (_S.BACKED_OFF, _E.STEADY): _S.BACKED_OFF,
    (_S.BACKED_OFF, _E.CALM): _S.RECOVERING,
    (_S.RECOVERING, _E.OVER): _S.BACKED_OFF,
    (_S.RECOVERING, _E.STEADY): _S.BACKED_OFF,  # the calm spell is over: it starts afresh next time
    (_S.RECOVERING, _E.CALM): _S.RECOVERING,
    (_S.RECOVERING, _E.STEPPED): _S.BACKED_OFF,  # the next step waits for another calm spell
    **{(state, _E.RESTORED): _S.CONFIGURED for state in _S},
}


@dataclass(frozen=True)
class Reading:
    """One filter's figures at a tick."""

    key: Key
    ifname: str
    configured: int  # 1-in-N the config (or `hwsflow enable`) asks for
    packets: int | None  # the tc sample action's packet counter; None when it could not be read
    drops: int = 0  # samples lost by this filter's group so far (GROUP_SEQ gaps)
    limit: int | None = None  # the port's own max_samples_per_s
    last_rate: int = 0  # the rate of the last sample the agent read of this group (0: none yet)
    at: float | None = None  # when the counter was read, if not at the tick's time


@dataclass(frozen=True)
class RateChange:
    key: Key
    ifname: str
    old: int
    new: int
    reason: str

    def log_line(self) -> LogLine:
        # INFO: the agent resolves the load itself; the lost samples it reacts to are counted as drops
        direction = self.key[1]
        return LogLine(logging.INFO, f"port {self.ifname} {direction}: sampling 1-in-{self.old} -> 1-in-{self.new}: "
                                     f"{self.reason}")


@dataclass
class _Filter:
    configured: int
    rate: int
    state: BackoffState = BackoffState.CONFIGURED
    packets: int | None = None  # the last counter reading, and when
    read_at: float = 0.0
    pps: float | None = None  # packets/s over the last tick; None when unknown
    drops: int = 0
    calm_since: float | None = None
    reason: str | None = None  # why the rate in force is not the configured one
    changed_at: float | None = None  # the last change, until a sample of its rate is read (or LOSS_SETTLE passed)


def water_level(demands: Iterable[float], target: float) -> float:
    """The level L at which sum(min(d, L)) == target: filters under it keep their load, the others are cut
    to it.  math.inf when everything fits."""
    ordered = sorted(demands)
    if sum(ordered) <= target:
        return math.inf
    remaining, left = target, len(ordered)
    for demand in ordered:
        share = remaining / left
        if demand > share:
            return share
        remaining -= demand
        left -= 1
    return 0.0  # not reached: the sum is over target, so some demand exceeds its share


def rate_for(pps: float, configured: int, allowed: float) -> int:
    """The smallest N from configured up whose samples (pps / N) stay within allowed samples/s."""
    if allowed <= 0:
        return U32_MAX
    return min(max(configured, math.ceil(pps / allowed)), U32_MAX)


class BackoffPolicy:
    """Per filter: the rate in force and why; tick() says which rates to change."""

    def __init__(self, budget: int = DEFAULT_BUDGET, hold: float = DEFAULT_HOLD) -> None:
        self.budget = budget  # samples/s for the whole agent; 0 turns back-off off
        self.hold = hold
        self._filters: dict[Key, _Filter] = {}
        self._overruns: int | None = None
        self._settled = True  # at the last tick, every change's rate showed in the samples read
        self._lossy = 0  # ticks on end that saw losses
        self._baseline_drops = False  # the next readings' drops are a baseline, not losses (after pause())
        self._lowered: tuple[float, float] | None = None  # (budget, until) after a loss

    def configure(self, budget: int, hold: float) -> None:
        """A reload's values; rates in force stay until the next tick decides."""
        self.budget, self.hold = budget, hold

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def active(self) -> bool:
        """Whether any filter runs at another rate than its configured one."""
        return any(f.state is not BackoffState.CONFIGURED for f in self._filters.values())

    def rate(self, key: Key, configured: int) -> int:
        """The rate a filter installed now must have: the configured one unless backed off above it."""
        found = self._filters.get(key)
        if found is None or found.state is BackoffState.CONFIGURED:
            return configured
        return max(found.rate, configured)

    def state(self, key: Key) -> BackoffState:
        found = self._filters.get(key)
        return found.state if found is not None else BackoffState.CONFIGURED

    def reason(self, key: Key) -> str | None:
        """Why the filter runs at another rate than the configured one; None when it does not."""
        found = self._filters.get(key)
        return found.reason if found is not None and found.state is not BackoffState.CONFIGURED else None

    def pause(self) -> None:
        """The agent skips reading the counters while the load is far below the budget (idle()): the next reading
        is a new baseline, so a rate is never worked out over the quiet time, nor losses counted from before."""
        for f in self._filters.values():
            f.packets, f.pps = None, None
        self._overruns = None
        self._baseline_drops = True
        self._lossy = 0

    def idle(self, now: float, samples_per_s: float) -> bool:
        """Whether a tick may skip the counters: samples (received and lost) arrive at under IDLE_SHARE of the
        budget and no rate is backed off, so no decision could change a rate."""
        return self.enabled and not self.active() and samples_per_s < IDLE_SHARE * self.effective_budget(now)

    def effective_budget(self, now: float) -> float:
        if self._lowered is not None and now < self._lowered[1]:
            return min(self._lowered[0], self.budget)
        return float(self.budget)

    # ------------------------------------------------------------ the tick

    def tick(self, now: float, readings: Iterable[Reading], overruns: int = 0) -> list[RateChange]:
        """One tick's readings (every watched filter; those missing are forgotten) and the psample socket's
        overruns so far: the rate changes to make, each with its reason."""
        current = {reading.key: reading for reading in readings}
        for key in set(self._filters) - set(current):
            del self._filters[key]
        changes: list[RateChange] = []
        lost_samples = self._measure(now, current)
        self._baseline_drops = False
        overrun = 0 if self._overruns is None else max(overruns - self._overruns, 0)
        self._overruns = overruns
        if not self.enabled:
            return [c for c in (self._restore(key, r.ifname, now, "back-off turned off (max_samples_per_s: 0)")
                                for key, r in current.items()) if c is not None]
        known = {key: f for key, f in self._filters.items() if f.pps is not None}
        load = sum(self._load(f) for f in known.values())
        # losses measured since the last tick count only if the samples read then were already of the rates in force
        settled, self._settled = self._settled, self._all_settled(now, current)
        self._lossy = self._lossy + 1 if (lost_samples or overrun) and settled else 0
        if self._lossy >= LOSS_TICKS and load >= LOSS_MIN_LOAD and load <= self.effective_budget(now):
            lowered = max(load * LOSS_CUT, LOSS_MIN_LOAD)
            self._lowered = (lowered, now + LOSS_MEMORY)
        budget = self.effective_budget(now)
        loss_text = self._loss_text(lost_samples, overrun, budget) if self._lowered and budget < self.budget else ""
        over_ports = {key for key, f in known.items()
                      if current[key].limit and self._load(f) > (current[key].limit or 0)}
        if load > budget or over_ports:
            changes += self._back_off(now, current, known, load, budget, loss_text)
        elif load < RECOVER_BELOW * budget and all(
                self._load(f) < RECOVER_BELOW * (current[k].limit or math.inf) for k, f in known.items()):
            changes += self._recover(now, current, known, load, budget)
        else:
            for f in known.values():
                self._fire(f, BackoffEvent.STEADY, now)
        if changes:
            self._settled = False
        return changes

    def _all_settled(self, now: float, current: Mapping[Key, Reading]) -> bool:
        """Whether the agent reads samples of the rate in force on every filter changed lately: samples of the
        old rate queued on the socket before the change are read by then, and losses are the new rates'."""
        for key, f in self._filters.items():
            if f.changed_at is None:
                continue
            if current[key].last_rate == f.rate or now - f.changed_at >= LOSS_SETTLE:
                f.changed_at = None
            else:
                return False
        return True

    def _measure(self, now: float, current: Mapping[Key, Reading]) -> int:
        """Packets per second of each filter since the last tick; the samples its group lost since then."""
        lost = 0
        for key, reading in current.items():
            f = self._filters.get(key)
            if f is None:
                f = self._filters[key] = _Filter(reading.configured, reading.configured, drops=reading.drops)
            if reading.configured != f.configured:
                f.configured = reading.configured
                if f.rate <= reading.configured:  # the new rate is at least what back-off had: it takes over
                    f.rate, f.reason = reading.configured, None
                    f.state = TRANSITIONS[f.state, BackoffEvent.RESTORED]
            if not self._baseline_drops:
                lost += max(reading.drops - f.drops, 0)
            f.drops = reading.drops
            if reading.packets is None:
                f.pps = None
                continue
            at = reading.at if reading.at is not None else now
            if f.packets is not None and reading.packets >= f.packets:
                if at - f.read_at < MIN_INTERVAL:
                    continue  # too short a time to tell a rate from the jitter of when ticks run: keep the last one
                f.pps = (reading.packets - f.packets) / (at - f.read_at)
            else:
                f.pps = None  # first reading, or the filter was reinstalled and counts from 0
            f.packets, f.read_at = reading.packets, at
        return lost

    @staticmethod
    def _load(f: _Filter) -> float:
        """Samples per second the filter sends at the rate in force."""
        return (f.pps or 0.0) / f.rate

    def _fire(self, f: _Filter, event: BackoffEvent, now: float) -> None:
        before, f.state = f.state, TRANSITIONS[f.state, event]
        if f.state is BackoffState.RECOVERING and before is not BackoffState.RECOVERING:
            f.calm_since = now
        elif f.state is not BackoffState.RECOVERING:
            f.calm_since = None

    def _change(self, key: Key, f: _Filter, ifname: str, new: int, reason: str, now: float) -> RateChange:
        change = RateChange(key, ifname, f.rate, new, reason)
        f.rate, f.changed_at = new, now
        f.reason = reason if new != f.configured else None
        return change

    def _restore(self, key: Key, ifname: str, now: float, reason: str) -> RateChange | None:
        f = self._filters[key]
        if f.state is BackoffState.CONFIGURED and f.rate == f.configured:
            return None
        self._fire(f, BackoffEvent.RESTORED, now)
        return self._change(key, f, ifname, f.configured, reason, now)

    def _back_off(self, now: float, current: Mapping[Key, Reading], known: Mapping[Key, _Filter], load: float,
                  budget: float, loss_text: str) -> list[RateChange]:
        """Raise N on the filters that send the most, so the load comes to BACKOFF_TARGET of the budget(s)."""
        # what each filter would send at its configured rate, capped by its port's own budget
        caps = {k: BACKOFF_TARGET * (current[k].limit or math.inf) for k in known}
        demand = {k: min(f.pps or 0.0, caps[k] * f.configured) / f.configured for k, f in known.items()}
        level = water_level(demand.values(), BACKOFF_TARGET * budget) if load > budget else math.inf
        changes = []
        for key, f in known.items():
            allowed = min(level, caps[key])
            new = rate_for(f.pps or 0.0, f.configured, allowed)
            if new <= f.rate:
                self._fire(f, BackoffEvent.STEADY, now)
                continue
            limit = current[key].limit
            if limit and self._load(f) > limit:
                why = f"{self._load(f):.0f} samples/s on this port, over its max_samples_per_s of {limit}"
            else:
                why = f"{load:.0f} samples/s from all ports, over the budget of {budget:.0f} (max_samples_per_s)"
            self._fire(f, BackoffEvent.OVER, now)
            changes.append(self._change(key, f, current[key].ifname, new, why + loss_text, now))
        return changes

    def _recover(self, now: float, current: Mapping[Key, Reading], known: Mapping[Key, _Filter], load: float,
                 budget: float) -> list[RateChange]:
        """After `hold` seconds under RECOVER_BELOW: step N back as far as keeps the load at BACKOFF_TARGET."""
        for f in known.values():
            self._fire(f, BackoffEvent.CALM, now)
        due = [k for k, f in known.items()
               if f.state is BackoffState.RECOVERING and f.calm_since is not None and now - f.calm_since >= self.hold]
        if not due:
            return []
        caps = {k: BACKOFF_TARGET * (current[k].limit or math.inf) for k in known}
        demand = {k: min((f.pps or 0.0) / f.configured, caps[k]) for k, f in known.items()}
        level = water_level(demand.values(), BACKOFF_TARGET * budget)
        changes = []
        for key in due:
            f = known[key]
            new = min(rate_for(f.pps or 0.0, f.configured, min(level, caps[key])), f.rate)
            if new == f.rate or (new != f.configured and new > f.rate * STEP_MIN):
                continue  # too small a step to be worth a change: stays, and never creeps
            why = (f"the load stayed under half the budget ({load:.0f} < {RECOVER_BELOW * budget:.0f} samples/s) "
                   f"for {self.hold:.0f} s")
            self._fire(f, BackoffEvent.RESTORED if new == f.configured else BackoffEvent.STEPPED, now)
            changes.append(self._change(key, f, current[key].ifname, new, why, now))
        return changes

    def _loss_text(self, lost: int, overrun: int, budget: float) -> str:
        return (f"; the kernel lost samples at a lower load on this host, so the budget is {budget:.0f} for "
                f"{LOSS_MEMORY / 60:.0f} min" + (f" ({lost} sequence gaps, {overrun} socket overruns this tick)"
                                                  if lost or overrun else ""))
