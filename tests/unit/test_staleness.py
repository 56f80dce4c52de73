"""The staleness rule: how long a policy stays authoritative without news, and what then."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from edge_agent.clock import UTC, parse_time
from edge_agent.staleness import Staleness, assess

CONFIRMED = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
HOUR = 3600


def rule(stale_after_s: Any = HOUR, on_stale: Any = "report") -> dict[str, Any]:
    return {
        "mode": "enforce",
        "reconcile_interval_s": 60,
        "sync_interval_s": 300,
        "stale_after_s": stale_after_s,
        "on_stale": on_stale,
    }


def at(seconds: float) -> dt.datetime:
    return CONFIRMED + dt.timedelta(seconds=seconds)


# -- no rule: authoritative forever -------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "enforce", "reconcile_interval_s": 60, "sync_interval_s": 300},  # key absent
        rule(None, "report"),  # Settings.to_json of a bundle without the rule
        rule(None, "audit"),
    ],
    ids=["absent", "none-report", "none-audit"],
)
def test_without_a_rule_a_policy_is_never_stale(settings: dict[str, Any]) -> None:
    ten_years_on = CONFIRMED + dt.timedelta(days=3653)
    verdict = assess(settings, confirmed_at=CONFIRMED, now=ten_years_on)
    assert verdict.stale is False
    assert verdict.audit is False
    assert verdict.stale_after_s is None
    assert verdict.stale_since is None
    assert verdict.line() == "authoritative until replaced (no staleness rule)"


def test_without_a_rule_and_without_any_confirmation_a_policy_is_not_stale() -> None:
    verdict = assess({}, confirmed_at=None, now=CONFIRMED + dt.timedelta(days=3653))
    assert (verdict.stale, verdict.stale_after_s, verdict.confirmed_at) == (False, None, None)
    assert verdict.on_stale == "report"


@pytest.mark.parametrize("limit", [0, -300, True, 3600.0, "3600"])
def test_a_limit_that_is_not_a_positive_integer_is_no_rule(limit: Any) -> None:
    verdict = assess(rule(limit), confirmed_at=CONFIRMED, now=at(10 * 365 * 86400))
    assert verdict.stale is False
    assert verdict.stale_after_s is None


# -- a rule --------------------------------------------------------------------------------


def test_a_rule_without_a_confirmation_time_is_not_stale_but_keeps_its_limit() -> None:
    verdict = assess(rule(HOUR), confirmed_at=None, now=at(10 * 365 * 86400))
    assert verdict == Staleness(False, "report", HOUR, None, None)
    assert verdict.line() == f"confirmed never; stale after {HOUR} s without contact"


def test_exactly_at_the_limit_is_not_stale() -> None:
    verdict = assess(rule(HOUR), confirmed_at=CONFIRMED, now=at(HOUR))
    assert verdict == Staleness(False, "report", HOUR, CONFIRMED, None)
    assert verdict.line() == (
        f"confirmed 2026-11-24T12:00:00Z; stale after {HOUR} s without contact"
    )


def test_one_second_past_the_limit_is_stale_since_the_limit() -> None:
    verdict = assess(rule(HOUR), confirmed_at=CONFIRMED, now=at(HOUR + 1))
    assert verdict.stale is True
    assert verdict.stale_after_s == HOUR
    assert verdict.confirmed_at == CONFIRMED
    assert verdict.stale_since == at(HOUR)  # when it became stale, not when it was noticed


def test_a_sub_second_past_the_limit_is_already_stale() -> None:
    assert assess(rule(HOUR), confirmed_at=CONFIRMED, now=at(HOUR + 0.001)).stale is True


def test_the_stale_since_time_does_not_move_with_now() -> None:
    later = [assess(rule(HOUR), confirmed_at=CONFIRMED, now=at(HOUR + s)) for s in (1, 60, 86400)]
    assert {v.stale_since for v in later} == {at(HOUR)}


def test_a_clock_that_went_back_gives_age_zero_not_stale() -> None:
    a_year_before = CONFIRMED - dt.timedelta(days=365)
    verdict = assess(rule(300), confirmed_at=CONFIRMED, now=a_year_before)
    assert verdict == Staleness(False, "report", 300, CONFIRMED, None)


def test_a_clock_that_jumped_forward_makes_the_policy_stale_at_once() -> None:
    # NTP answering after a boot at 1970: the confirmation was stamped on the wrong clock.
    boot = dt.datetime(1970, 1, 1, tzinfo=UTC)
    verdict = assess(rule(300), confirmed_at=boot, now=CONFIRMED)
    assert verdict.stale is True
    assert verdict.stale_since == boot + dt.timedelta(seconds=300)


# -- what a stale policy does ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_stale", "stale_after", "audit", "action"),
    [
        ("report", HOUR + 1, False, "still enforced"),
        ("audit", HOUR + 1, True, "audit only (not changing the cluster)"),
        ("audit", HOUR, False, None),  # the audit rule applies only once stale
        ("report", HOUR, False, None),
    ],
)
def test_on_stale_decides_whether_the_agent_stops_changing_the_cluster(
    on_stale: str, stale_after: int, audit: bool, action: str | None
) -> None:
    verdict = assess(rule(HOUR, on_stale), confirmed_at=CONFIRMED, now=at(stale_after))
    assert verdict.on_stale == on_stale
    assert verdict.audit is audit
    if action is None:
        assert "STALE" not in verdict.line()
    else:
        assert verdict.line() == (
            f"STALE since 2026-11-24T13:00:00Z (confirmed 2026-11-24T12:00:00Z); {action}"
        )


@pytest.mark.parametrize("on_stale", [None, ""])
def test_on_stale_defaults_to_report(on_stale: Any) -> None:
    verdict = assess(rule(HOUR, on_stale), confirmed_at=CONFIRMED, now=at(2 * HOUR))
    assert (verdict.stale, verdict.on_stale, verdict.audit) == (True, "report", False)


def test_the_audit_property_needs_both_stale_and_audit() -> None:
    assert Staleness(True, "audit", 300, CONFIRMED, at(300)).audit is True
    assert Staleness(False, "audit", 300, CONFIRMED, None).audit is False
    assert Staleness(True, "report", 300, CONFIRMED, at(300)).audit is False


# -- the JSON form ---------------------------------------------------------------------------


def test_to_json_of_a_stale_policy_round_trips_through_json() -> None:
    verdict = assess(rule(HOUR, "audit"), confirmed_at=CONFIRMED, now=at(2 * HOUR))
    doc = verdict.to_json()
    assert doc == {
        "stale": True,
        "on_stale": "audit",
        "stale_after_s": HOUR,
        "confirmed_at": "2026-11-24T12:00:00Z",
        "stale_since": "2026-11-24T13:00:00Z",
    }
    assert json.loads(json.dumps(doc)) == doc
    assert parse_time(doc["confirmed_at"]) == verdict.confirmed_at
    assert parse_time(doc["stale_since"]) == verdict.stale_since


def test_to_json_without_a_rule_or_confirmation_has_nulls() -> None:
    assert assess({}, confirmed_at=None, now=CONFIRMED).to_json() == {
        "stale": False,
        "on_stale": "report",
        "stale_after_s": None,
        "confirmed_at": None,
        "stale_since": None,
    }


def test_to_json_times_are_whole_seconds_in_utc() -> None:
    confirmed = dt.datetime(
        2026, 11, 24, 13, 0, 0, 900_000, tzinfo=dt.timezone(dt.timedelta(hours=1))
    )
    doc = assess(rule(300), confirmed_at=confirmed, now=confirmed + dt.timedelta(days=1)).to_json()
    assert doc["confirmed_at"] == "2026-11-24T12:00:00Z"
    assert doc["stale_since"] == "2026-11-24T12:05:00Z"
