"""hwsflow.daemon.logs.RateLimiter with a fake clock."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from hwsflow.daemon.logs import RateLimiter


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_message_of_a_key_is_logged_then_held_back_for_the_interval() -> None:
    clock = FakeClock()
    limiter = RateLimiter(interval=60.0, clock=clock)
    assert limiter.allow("enp4s0f0_1") == (True, 0)
    clock.now += 59.9
    assert limiter.allow("enp4s0f0_1") == (False, 0)
    assert limiter.allow("enp4s0f0_1") == (False, 0)
    clock.now += 0.1  # exactly one interval after the logged one
    assert limiter.allow("enp4s0f0_1") == (True, 2)
    clock.now += 1
    assert limiter.allow("enp4s0f0_1") == (False, 0)
    clock.now += 60
    assert limiter.allow("enp4s0f0_1") == (True, 1), "the count restarts after each logged message"


def test_keys_are_independent() -> None:
    clock = FakeClock()
    limiter = RateLimiter(interval=60.0, clock=clock)
    assert limiter.allow("192.0.2.10:6343") == (True, 0)
    assert limiter.allow("[2001:db8::10]:6343") == (True, 0)
    assert limiter.allow("192.0.2.10:6343") == (False, 0)


def test_state_is_bounded_and_the_key_logged_longest_ago_is_forgotten_first() -> None:
    clock = FakeClock()
    limiter = RateLimiter(interval=60.0, max_keys=3, clock=clock)
    for name in ("a", "b", "c"):
        limiter.allow(name)
        clock.now += 1
    limiter.allow("a")  # held back: does not make "a" younger
    limiter.allow("d")  # a fourth key: "a", logged longest ago, goes
    assert len(limiter._windows) == 3
    assert limiter.allow("a") == (True, 0), "a forgotten key is logged again, its count lost"
    assert limiter.allow("c") == (False, 0)
    for i in range(10_000):
        limiter.allow(f"vf{i}")
    assert len(limiter._windows) == 3


def test_warn_appends_the_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = RateLimiter(interval=10.0, clock=clock)
    logger = logging.getLogger("hwsflow.test_logs")
    caplog.set_level(logging.INFO, logger=logger.name)
    results = [limiter.warn(logger, "p0", "port %s: filter not in hardware", "p0") for _ in range(4)]
    clock.now += 10
    results.append(limiter.warn(logger, "p0", "port %s: filter not in hardware", "p0"))
    assert results == [True, False, False, False, True]
    assert [r.getMessage() for r in caplog.records] == [
        "port p0: filter not in hardware",
        "port p0: filter not in hardware (3 similar suppressed)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        RateLimiter(max_keys=0)
