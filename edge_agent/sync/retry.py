"""When to talk to the management server again after a failure (pure: no clock, no I/O).

The sync engine keeps one ``Link`` value per server and asks it before every request:

- ``permit(link, now_s)`` says SEND (the link is fine), PROBE (the wait after a failure is
  over: send exactly one request, the recovery probe) or WAIT (``wait_s`` more seconds, or
  until the probe in flight has an outcome). After an outage the link therefore comes back
  with one request, not with every queued request at once.
- ``on_success`` makes the link healthy again (every request may go).
- ``on_failure`` counts the failure and sets the earliest time of the next attempt:
  exponential backoff with full jitter (``edge_agent.backoff.Backoff``), never sooner than a
  server's ``Retry-After`` (itself capped by ``max_retry_after_s``, so a wrong header cannot
  silence a site for a year), and ``refused_wait_s`` after a permanent refusal (a revoked
  credential or a protocol mismatch is not fixed by asking again soon, but may be fixed by a
  person on the server, so the agent asks again, rarely).

``now_s`` is a monotonic clock reading and ``random_fraction`` a uniform draw in [0, 1), both
passed in, so every decision is reproducible under test. ``parse_retry_after`` turns the
header (delay-seconds or HTTP-date) into seconds relative to a given time.

Invariants: a WAIT is never shorter than the last Retry-After asked for; at most one probe is
in flight while the link is failing; a success always resets the link.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from edge_agent.backoff import Backoff


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=5.0, cap_s=300.0, floor_s=1.0))
    max_retry_after_s: float = 3600.0  # a server may ask for up to an hour of silence
    refused_wait_s: float = 3600.0  # after a 4xx: a person must act; ask again hourly


@dataclass(frozen=True, slots=True)
class Link:
    """What the agent knows about its link to the server. A fresh value is a healthy link."""

    failures: int = 0  # consecutive failed requests
    not_before_s: float = 0.0  # monotonic time before which no request starts
    probe_in_flight: bool = False

    @property
    def healthy(self) -> bool:
        return self.failures == 0


class Verdict(enum.Enum):
    SEND = "send"  # healthy link: go
    PROBE = "probe"  # failing link, wait over: this one request only
    WAIT = "wait"  # not yet


@dataclass(frozen=True, slots=True)
class Permit:
    verdict: Verdict
    wait_s: float | None = None  # WAIT: seconds to go; None = until the probe's outcome


def permit(link: Link, now_s: float) -> tuple[Permit, Link]:
    """May a request start now? Returns the answer and the link to keep."""
    if now_s < link.not_before_s:
        return Permit(Verdict.WAIT, link.not_before_s - now_s), link
    if link.healthy:
        return Permit(Verdict.SEND), link
    if link.probe_in_flight:
        return Permit(Verdict.WAIT, None), link
    return Permit(Verdict.PROBE), dataclasses.replace(link, probe_in_flight=True)


def on_success(link: Link) -> Link:
    """Any complete answer that is not a failure (2xx, 304) makes the link healthy."""
    return Link()


def on_failure(
    link: Link,
    policy: RetryPolicy,
    *,
    now_s: float,
    random_fraction: float,
    retry_after_s: float | None = None,
    permanent: bool = False,
) -> Link:
    """Count a failure; the next request waits for the backoff, Retry-After or refusal wait."""
    failures = link.failures + 1
    delay_s = policy.backoff.delay_s(failures, random_fraction)
    if retry_after_s is not None:
        delay_s = max(delay_s, min(max(retry_after_s, 0.0), policy.max_retry_after_s))
    if permanent:
        delay_s = max(delay_s, policy.refused_wait_s)
    return Link(failures=failures, not_before_s=now_s + delay_s, probe_in_flight=False)


def parse_retry_after(value: str | None, *, now: dt.datetime) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 §10.2.3), or None if unusable.

    ``value`` is delay-seconds (``120``) or an HTTP-date (``Wed, 21 Oct 2026 07:28:00 GMT``);
    ``now`` (timezone-aware) is the reference for a date: the answer's own ``Date`` header
    where it has one, so a skewed local clock does not matter. A date in the past is 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text)) if len(text) <= 12 else None
    when = parse_http_date(text)
    return None if when is None else max(0.0, (when - now).total_seconds())


def parse_http_date(value: str | None) -> dt.datetime | None:
    """An HTTP ``Date`` header as an aware datetime, or None."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # "-0000" is RFC 5322's unknown zone; HTTP-dates are always GMT.
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
