"""When a newly verified revision may be applied: maintenance windows and the on-site hold.

Pure: values and a site-local time in, a decision out.

- A **maintenance window** is written ``DAYS HH:MM-HH:MM`` in site time: ``Sat 02:00-04:00``,
  ``Mon-Fri 22:00-02:00`` (ends the next morning), ``Mon,Wed 01:00-01:30``, ``daily 03:00-04:00``.
  A window that ends before it starts crosses midnight and belongs to the day it starts.
  Windows are compared in absolute time (UTC): on the night clocks go forward a window
  starting in the skipped hour opens when the clocks jump, and a window is never shorter
  than its written length (``Sun 02:00-03:00`` still lasts an hour that night); on the night
  they go back it lasts as long as the clocks say.
- ``decide``: a **hold** (set by the person on site) stops everything until released, even an
  urgent revision; otherwise a revision applies at once when there are no windows, when it is
  marked urgent, or when now is inside a window; else it waits for the next window's start.

The windows are those of the policy in force (the schedule the site runs under); the urgent
flag is the new revision's own. Not here: reading the clock, the store or the time zone.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 16
_WINDOW = re.compile(r"^\s*(\S+)\s+(\d{2}):(\d{2})-(\d{2}):(\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: dt.time
    end: dt.time

    def _span(self, day: dt.date, tz: dt.tzinfo | None) -> tuple[dt.datetime, dt.datetime]:
        """The window of ``day`` as absolute (UTC) times."""
        start = dt.datetime.combine(day, self.start, tz)
        end = dt.datetime.combine(day, self.end, tz)
        if end <= start:
            end += dt.timedelta(days=1)
        nominal = end.replace(tzinfo=None) - start.replace(tzinfo=None)
        start_utc, end_utc = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
        return start_utc, max(end_utc, start_utc + nominal)


def parse_window(text: str) -> Window:
    """A window from its text; ValueError saying what is wrong."""
    if not isinstance(text, str) or len(text) > 64:
        raise ValueError("a maintenance window must be a string like 'Sat 02:00-04:00'")
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(f"maintenance window {text!r} is not 'DAYS HH:MM-HH:MM'")
    day_text, h1, m1, h2, m2 = match.groups()
    try:
        start, end = dt.time(int(h1), int(m1)), dt.time(int(h2), int(m2))
    except ValueError:
        raise ValueError(f"maintenance window {text!r}: not a time of day") from None
    if start == end:
        raise ValueError(f"maintenance window {text!r} is empty")
    return Window(_days(day_text.lower(), text), start, end)


def _days(text: str, whole: str) -> frozenset[int]:
    if text in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if not _day(first) or (last and not _day(last)):
            raise ValueError(f"maintenance window {whole!r}: unknown day {part!r}")
        a = DAYS.index(first[:3])
        b = DAYS.index(last[:3]) if last else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def _day(text: str) -> bool:
    """A day name: its first three letters, or the whole English name."""
    full = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    return text in DAYS or text in full


def parse_windows(values: Any) -> tuple[Window, ...]:
    if not isinstance(values, list) or len(values) > MAX_WINDOWS:
        raise ValueError(f"maintenance_windows must be a list of at most {MAX_WINDOWS} windows")
    return tuple(parse_window(v) for v in values)


def windows_of(policy: Mapping[str, Any] | None) -> tuple[Window, ...]:
    """The maintenance windows of a stored policy (or its summary); none without a policy.
    The policy was verified, so its windows parse; a damaged record counts as none."""
    settings = (policy or {}).get("settings") or {}
    try:
        return parse_windows(list(settings.get("maintenance_windows") or []))
    except ValueError:
        return ()


@dataclass(frozen=True, slots=True)
class Decision:
    apply: bool
    reason: str
    next_at: dt.datetime | None = None  # when it may apply (None: when released)


def inside(windows: Sequence[Window], now: dt.datetime) -> bool:
    """True when site-local ``now`` is inside one of the windows."""
    for window in windows:
        for back in (0, 1):  # a window that started yesterday may still be open
            day = now.date() - dt.timedelta(days=back)
            if day.weekday() in window.days:
                start, end = window._span(day, now.tzinfo)
                if start <= now.astimezone(dt.UTC) < end:
                    return True
    return False


def next_start(windows: Sequence[Window], now: dt.datetime) -> dt.datetime | None:
    """The next window start after site-local ``now``, in site time (None without windows)."""
    starts = [
        window._span(now.date() + dt.timedelta(days=ahead), now.tzinfo)[0]
        for window in windows
        for ahead in range(8)
        if (now.date() + dt.timedelta(days=ahead)).weekday() in window.days
    ]
    upcoming = [s for s in starts if s > now.astimezone(dt.UTC)]
    return min(upcoming).astimezone(now.tzinfo) if upcoming else None


def decide(
    *,
    hold: Mapping[str, Any] | None,
    windows: Sequence[Window],
    urgent: bool,
    now: dt.datetime,
) -> Decision:
    """May a newly verified revision be applied at site-local ``now``?"""
    if hold:
        return Decision(False, f"held on site since {hold.get('since')}: {hold.get('reason')}")
    if urgent:
        return Decision(True, "urgent: applied outside the maintenance windows")
    if not windows or inside(windows, now):
        return Decision(True, "inside a maintenance window" if windows else "no maintenance window")
    at = next_start(windows, now)
    return Decision(False, "waiting for the next maintenance window", at)
