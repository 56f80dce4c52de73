"""Retry timing as a pure policy: exponential backoff with full jitter, capped.

``delay_s(failures, random_fraction)`` is the wait before the next attempt after
``failures`` consecutive failures (1 = the first failure). "Full jitter" (AWS
architecture blog) draws uniformly from ``[0, min(cap, base * 2**(failures-1))]`` so that
hundreds of sites that failed together do not retry together. The random fraction is
passed in, so the policy is deterministic under test. No I/O, no clock, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 5.0  # ceiling of the first retry's wait
    cap_s: float = 300.0  # no wait is longer than this
    floor_s: float = 1.0  # never retry sooner than this (no tight loop, whatever the draw)

    def ceiling_s(self, failures: int) -> float:
        """The largest wait after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, 62)  # 2**62 s is far past any cap; avoids overflow
        return min(self.cap_s, self.base_s * float(2**exponent))

    def delay_s(self, failures: int, random_fraction: float) -> float:
        """Full-jitter wait; ``random_fraction`` is uniform in [0, 1)."""
        if failures <= 0:
            return 0.0
        if not 0.0 <= random_fraction < 1.0:
            raise ValueError(f"random_fraction {random_fraction!r} is not in [0, 1)")
        return max(self.floor_s, random_fraction * self.ceiling_s(failures))
