"""``gate``: maintenance windows in site time, and what may apply when."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from edge_agent.gate import decide, inside, next_start, parse_window, parse_windows

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """2026-11-23 is a Monday; ``day`` 0..6 from it, Berlin time."""
    return dt.datetime(2026, 11, 23, hour, minute, tzinfo=BERLIN) + dt.timedelta(days=day)


@pytest.mark.parametrize(
    ("text", "days", "start", "end"),
    [
        ("Sat 02:00-04:00", {5}, "02:00", "04:00"),
        ("daily 01:00-02:00", set(range(7)), "01:00", "02:00"),
        ("Mon-Fri 22:00-02:00", {0, 1, 2, 3, 4}, "22:00", "02:00"),
        ("fri-mon 03:00-04:00", {4, 5, 6, 0}, "03:00", "04:00"),
        ("Mon,Wed 01:00-01:30", {0, 2}, "01:00", "01:30"),
        ("saturday 02:00-04:00", {5}, "02:00", "04:00"),
    ],
)
def test_windows_parse(text: str, days: set[int], start: str, end: str) -> None:
    window = parse_window(text)
    assert window.days == frozenset(days)
    assert f"{window.start:%H:%M}-{window.end:%H:%M}" == f"{start}-{end}"


@pytest.mark.parametrize(
    "text", ["Sat 2:00-4:00", "Sat 02:00-02:00", "Xyz 02:00-04:00", "Sat 25:00-26:00", "Sat", 3]
)
def test_bad_windows_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="maintenance window"):
        parse_window(text)  # type: ignore[arg-type]


def test_at_most_16_windows() -> None:
    with pytest.raises(ValueError, match="at most 16"):
        parse_windows(["daily 01:00-02:00"] * 17)


def test_inside_and_across_midnight() -> None:
    windows = parse_windows(["Fri 22:00-02:00"])
    assert inside(windows, at(4, 23)) and inside(windows, at(5, 1, 59))
    assert not inside(windows, at(5, 2)) and not inside(windows, at(4, 21, 59))
    assert not inside(windows, at(3, 23))  # Thursday night is not Friday's window


def test_next_start_is_the_soonest() -> None:
    windows = parse_windows(["Sat 02:00-04:00", "Tue 03:00-04:00"])
    assert next_start(windows, at(2, 12)) == at(5, 2)  # Wednesday noon -> Saturday 02:00
    assert next_start(windows, at(5, 3)) == at(8, 3)  # inside Saturday's -> next Tuesday
    assert next_start((), at(0, 0)) is None


def test_a_hold_wins_over_everything() -> None:
    decision = decide(
        hold={"reason": "fair day", "since": "2026-11-23T08:00:00Z"},
        windows=(),
        urgent=True,
        now=at(0, 9),
    )
    assert not decision.apply and "fair day" in decision.reason and decision.next_at is None


def test_urgent_no_window_inside_and_waiting() -> None:
    windows = parse_windows(["Sat 02:00-04:00"])
    assert decide(hold=None, windows=windows, urgent=True, now=at(2, 12)).apply
    assert decide(hold=None, windows=(), urgent=False, now=at(2, 12)).apply
    assert decide(hold=None, windows=windows, urgent=False, now=at(5, 3)).apply
    waiting = decide(hold=None, windows=windows, urgent=False, now=at(2, 12))
    assert not waiting.apply and waiting.next_at == at(5, 2)
