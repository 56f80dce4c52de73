"""Whether the policy in force is still authoritative (pure: values and a time in, a verdict out).

A policy may carry a staleness rule (``settings.stale_after_s`` and ``settings.on_stale``,
docs/bundle-format.md §7): how long it stays authoritative without the management plane
confirming it, and what the agent does after. The policy is *confirmed* by the server saying
"still the bundle you verified" (a 304 for its ETag; a 204, an error or a bundle the agent
rejected confirm nothing) and by any verified bundle (committed, or already in force,
whichever way it came). Without the rule it is authoritative
forever: the right default for an air-gapped site, whose only news is a USB stick.

Stale, the agent either keeps enforcing and says so (``report``) or stops changing the
cluster and only reports drift (``audit``). Staleness never removes anything: at worst the
agent stops healing.

The clock: the age is ``now - confirmed_at`` on the agent's own clock. A clock that went
back (``now`` before ``confirmed_at``) gives age 0, never a negative or huge age; a clock
that jumps forward (NTP after a boot at 1970) can make a policy stale at once, which is
reported and ends at the next contact. Not here: reading the clock or the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.clock import format_time


@dataclass(frozen=True, slots=True)
class Staleness:
    stale: bool
    on_stale: str  # "report" or "audit"
    stale_after_s: int | None  # None: authoritative forever
    confirmed_at: dt.datetime | None  # last contact or verified bundle
    stale_since: dt.datetime | None  # confirmed_at + stale_after_s, when stale

    @property
    def audit(self) -> bool:
        """True when the rule says: stop changing the cluster."""
        return self.stale and self.on_stale == "audit"

    def to_json(self) -> dict[str, Any]:
        return {
            "stale": self.stale,
            "on_stale": self.on_stale,
            "stale_after_s": self.stale_after_s,
            "confirmed_at": format_time(self.confirmed_at) if self.confirmed_at else None,
            "stale_since": format_time(self.stale_since) if self.stale_since else None,
        }

    def line(self) -> str:
        if self.stale_after_s is None:
            return "authoritative until replaced (no staleness rule)"
        confirmed = format_time(self.confirmed_at) if self.confirmed_at else "never"
        if not self.stale:
            return f"confirmed {confirmed}; stale after {self.stale_after_s} s without contact"
        action = "audit only (not changing the cluster)" if self.audit else "still enforced"
        since = format_time(self.stale_since) if self.stale_since else "?"
        return f"STALE since {since} (confirmed {confirmed}); {action}"


def assess(
    settings: Mapping[str, Any], *, confirmed_at: dt.datetime | None, now: dt.datetime
) -> Staleness:
    """The staleness of a policy with ``settings`` (its stored JSON) at ``now``."""
    limit = settings.get("stale_after_s")
    on_stale = str(settings.get("on_stale") or "report")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        return Staleness(False, on_stale, None, confirmed_at, None)
    if confirmed_at is None:
        return Staleness(False, on_stale, limit, None, None)
    age_s = max(0.0, (now - confirmed_at).total_seconds())
    since = confirmed_at + dt.timedelta(seconds=limit)
    stale = age_s > limit
    return Staleness(stale, on_stale, limit, confirmed_at, since if stale else None)
