"""Where the time comes from.

The pure core never reads a clock: the shell passes ``now`` in. ``Clock`` is the seam,
``SystemClock`` the real one; tests use their own fake that can go backwards (freezegun
also moves ``time.monotonic()`` backwards, which is why clock-rollback tests inject one).
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

UTC = dt.UTC


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Current wall-clock time, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The host's wall clock. It may be wrong (edge devices boot at 1970)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)


def format_time(value: dt.datetime) -> str:
    """RFC 3339 UTC with second precision, the only time format on the wire."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` exactly; raise ValueError on anything else."""
    if len(text) != 20 or not text.endswith("Z"):
        raise ValueError(f"time {text!r} is not in the form YYYY-MM-DDTHH:MM:SSZ")
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
