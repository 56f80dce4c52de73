"""Backoff is exponential with full jitter, capped, floored, and deterministic given the draw."""

from __future__ import annotations

import pytest

from edge_agent.backoff import Backoff


def test_ceiling_doubles_then_caps() -> None:
    policy = Backoff(base_s=5, cap_s=300)
    assert [policy.ceiling_s(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert policy.ceiling_s(10_000) == 300  # no overflow after a very long outage


def test_full_jitter_spans_zero_to_ceiling_with_a_floor() -> None:
    policy = Backoff(base_s=5, cap_s=300, floor_s=1)
    assert policy.delay_s(4, 0.5) == 20
    assert policy.delay_s(4, 0.0) == 1  # the floor: never a tight loop
    assert policy.delay_s(20, 0.999) == pytest.approx(299.7)


def test_no_failure_no_wait_and_bad_draw_refused() -> None:
    assert Backoff().delay_s(0, 0.5) == 0
    with pytest.raises(ValueError):
        Backoff().delay_s(1, 1.0)
