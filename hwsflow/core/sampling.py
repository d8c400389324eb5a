"""The sampling rate a port gets: a configured 1-in-N, or `auto` from the link's speed.

`auto` follows sFlow.org's recommendation as hsflowd applies it: one sample per 1,000,000 bits per
second of link speed (1-in-1000 at 1 Gbit/s, 1-in-10000 at 10 Gbit/s), never below 1-in-100 so slow
links are not sampled more densely than a 100 Mbit/s one.  A link whose driver reports no speed (VF
representors and virtual links often do not) gets the configured default.  Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

BITS_PER_SAMPLE_RATE = 1_000_000  # link speed in bit/s per unit of N
AUTO_MIN = 100  # the floor: a 10 Mbit/s link is sampled 1-in-100, like a 100 Mbit/s one


@dataclass(frozen=True)
class RateChoice:
    rate: int  # 1-in-N in force
    source: str  # why: "config", "auto" (from the link speed) or "auto-default" (no speed reported)
    speed_bps: int = 0  # the speed auto used; 0 when none


def auto_rate(speed_bps: int) -> int | None:
    """The rate for a link of speed_bps (whole divisions, as hsflowd), None when no speed is reported."""
    if speed_bps <= 0:
        return None
    return max(speed_bps // BITS_PER_SAMPLE_RATE, AUTO_MIN)


def choose_rate(configured: int, auto: bool, speed_bps: int) -> RateChoice:
    """configured is the fixed rate, or with auto the fallback for a link that reports no speed."""
    if not auto:
        return RateChoice(configured, "config")
    rate = auto_rate(speed_bps)
    if rate is None:
        return RateChoice(configured, "auto-default")
    return RateChoice(rate, "auto", speed_bps)


def describe(choice: RateChoice) -> str:
    """The reason status prints next to the rate."""
    if choice.source == "auto":
        return f"auto: link speed {choice.speed_bps // 1_000_000} Mbit/s"
    if choice.source == "auto-default":
        return "auto: no link speed reported, the default rate"
    return "configured"
