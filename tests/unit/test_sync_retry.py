"""Retry timing after a failure: backoff with full jitter, Retry-After honoured and capped,
a slow retry after a refusal, and one recovery probe before anything else goes."""

from __future__ import annotations

import datetime as dt

import pytest

from edge_agent.backoff import Backoff
from edge_agent.sync.retry import (
    Link,
    Permit,
    RetryPolicy,
    Verdict,
    on_failure,
    on_success,
    parse_retry_after,
    permit,
)

POLICY = RetryPolicy(
    backoff=Backoff(base_s=5, cap_s=300, floor_s=1), max_retry_after_s=3600, refused_wait_s=3600
)
NOW = dt.datetime(2026, 10, 21, 7, 28, 0, tzinfo=dt.UTC)


def fail(link: Link, now_s: float, r: float, **kwargs: object) -> Link:
    return on_failure(link, POLICY, now_s=now_s, random_fraction=r, **kwargs)  # type: ignore[arg-type]


def test_a_healthy_link_sends_everything() -> None:
    link = Link()
    for _ in range(3):
        decision, link = permit(link, 100.0)
        assert decision == Permit(Verdict.SEND)


def test_backoff_grows_with_full_jitter_and_caps() -> None:
    link = Link()
    waits = []
    for r in (0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.999):
        link = fail(link, 0.0, r)
        waits.append(link.not_before_s)
    assert waits == [2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 150.0, pytest.approx(299.7)]
    assert fail(Link(), 0.0, 0.0).not_before_s == 1.0  # the floor: never a tight loop
    assert fail(Link(failures=10_000), 0.0, 0.999).not_before_s <= 300


def test_retry_after_is_never_undercut_and_is_capped() -> None:
    link = fail(Link(), 10.0, 0.1, retry_after_s=30.0)
    assert link.not_before_s == 40.0  # backoff said 0.5 s; the server said 30 s
    longer = fail(Link(failures=7), 10.0, 0.9, retry_after_s=30.0)
    assert longer.not_before_s == pytest.approx(10.0 + 0.9 * 300)  # backoff longer: kept
    capped = fail(Link(), 0.0, 0.1, retry_after_s=10 * 365 * 86400.0)
    assert capped.not_before_s == 3600.0  # a wrong header cannot silence a site for years
    assert fail(Link(), 0.0, 0.5, retry_after_s=-5.0).not_before_s == 2.5


def test_a_refusal_is_retried_rarely() -> None:
    assert fail(Link(), 0.0, 0.5, permanent=True).not_before_s == 3600.0


def test_recovery_is_one_probe_then_everything() -> None:
    link = fail(Link(), 0.0, 0.5)  # next attempt at 2.5 s
    decision, link = permit(link, 1.0)
    assert decision == Permit(Verdict.WAIT, 1.5)
    decision, link = permit(link, 2.5)
    assert decision == Permit(Verdict.PROBE)
    for _ in range(3):  # the rest of the queue waits for the probe's outcome: no burst
        decision, link = permit(link, 3.0)
        assert decision == Permit(Verdict.WAIT, None)
    link = on_success(link)
    assert permit(link, 3.1)[0] == Permit(Verdict.SEND)


def test_a_failed_probe_backs_off_further() -> None:
    link = fail(Link(), 0.0, 0.5)
    _, link = permit(link, 3.0)
    assert link.probe_in_flight
    link = fail(link, 3.0, 0.5)
    assert (link.failures, link.not_before_s, link.probe_in_flight) == (2, 8.0, False)
    assert permit(link, 8.0)[0] == Permit(Verdict.PROBE)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Wed, 21 Oct 2026 07:30:00 GMT", 120.0),
        ("Wednesday, 21-Oct-26 07:30:00 GMT", 120.0),  # obsolete RFC 850 form, still accepted
        ("Wed, 21 Oct 2026 07:00:00 GMT", 0.0),  # in the past: at once
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("9" * 40, None),
    ],
)
def test_retry_after_seconds_or_http_date(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds
