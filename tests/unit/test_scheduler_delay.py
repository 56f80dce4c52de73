"""A cycle may choose its next delay: a number returned by the cycle is the wait, exactly.

Driven with freezegun as in test_scheduler.py: ``tick()`` moves the wall clock APScheduler
reads, ``wakeup()`` makes it look for due work.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from freezegun import freeze_time

from edge_agent.backoff import Backoff
from edge_agent.scheduler import CycleScheduler

UTC = dt.UTC
START = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
POLL_S = 0.01


class Chooser:
    """A cycle that returns the next of ``answers`` (None once they run out), or raises."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = list(answers)
        self.runs = 0
        self.fail_next = 0  # this many runs raise before answers are used again
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.runs += 1
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("the management server is unreachable")
            return self.answers.pop(0) if self.answers else None

    scheduler: CycleScheduler

    def wait_for(self, runs: int, timeout_s: float = 5.0) -> None:
        """Until ``runs`` cycles ran and were rescheduled (polled; the wall clock is frozen)."""
        for _ in range(int(timeout_s / POLL_S)):
            if self.scheduler.cycles_completed >= runs:
                break
            time.sleep(POLL_S)
        assert self.scheduler.cycles_completed == runs, f"{self.runs} runs, expected {runs}"
        assert self.runs == runs

    def still(self, runs: int) -> None:
        time.sleep(0.1)  # a short real wait to show that nothing more ran
        assert self.runs == runs


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[CycleScheduler, Chooser]]]:
    made: list[CycleScheduler] = []

    def build(answers: list[Any], **kwargs: Any) -> tuple[CycleScheduler, Chooser]:
        cycle = Chooser(answers)
        options: dict[str, Any] = {
            "interval_s": 60.0,
            "jitter_s": 0.0,
            "backoff": Backoff(base_s=5, cap_s=300, floor_s=1),
            "rng": random.Random(7),
            "guard_interval_s": 3600.0,  # tests call check_clock() themselves
        }
        options.update(kwargs)
        scheduler = CycleScheduler(cycle, **options)
        cycle.scheduler = scheduler
        made.append(scheduler)
        return scheduler, cycle

    yield build
    for scheduler in made:
        scheduler.shutdown()


def seconds_ahead(scheduler: CycleScheduler) -> float:
    assert scheduler.next_run_at is not None
    return (scheduler.next_run_at - dt.datetime.now(UTC)).total_seconds()


@pytest.mark.parametrize("delay", [12.5, 1, 7200])
def test_a_returned_delay_is_the_next_wait_exactly(make, delay: float) -> None:
    with freeze_time(START):
        scheduler, cycle = make([delay], interval_s=60.0, jitter_s=30.0)
        scheduler.start()
        cycle.wait_for(1)
        assert scheduler.next_run_at == START + dt.timedelta(seconds=delay)  # no jitter added


def test_the_next_cycle_runs_when_the_delay_is_over_not_before(make) -> None:
    with freeze_time(START) as frozen:
        scheduler, cycle = make([12.5, 20])
        scheduler.start()
        cycle.wait_for(1)
        frozen.tick(12)
        scheduler.wakeup()
        cycle.still(1)
        frozen.tick(0.5)
        scheduler.wakeup()
        cycle.wait_for(2)
        # The second answer is measured from the second run, not from the start.
        assert scheduler.next_run_at == START + dt.timedelta(seconds=12.5 + 20)


def test_a_delay_of_zero_runs_again_at_once(make) -> None:
    with freeze_time(START):
        scheduler, cycle = make([0, 600])
        scheduler.start()
        cycle.wait_for(2)  # no tick: the wall clock never moved
        assert scheduler.next_run_at == START + dt.timedelta(seconds=600)


def test_a_negative_delay_counts_as_zero(make) -> None:
    with freeze_time(START):
        scheduler, cycle = make([-30, 600])
        scheduler.start()
        cycle.wait_for(2)
        assert scheduler.next_run_at == START + dt.timedelta(seconds=600)


@pytest.mark.parametrize("answer", [None, True, False, "5", [5]], ids=repr)
def test_anything_but_a_number_means_the_interval(make, answer: Any) -> None:
    with freeze_time(START):
        scheduler, cycle = make([answer], interval_s=60.0)
        scheduler.start()
        cycle.wait_for(1)
        assert seconds_ahead(scheduler) == pytest.approx(60.0)


def test_a_returned_delay_after_failures_replaces_the_backoff_and_resets_it(make) -> None:
    with freeze_time(START) as frozen:
        scheduler, cycle = make([42], interval_s=600.0)
        cycle.fail_next = 1
        scheduler.start()
        cycle.wait_for(1)
        assert scheduler.consecutive_failures == 1
        assert 1 <= seconds_ahead(scheduler) <= 5  # the backoff, not the interval
        frozen.tick(5)
        scheduler.wakeup()
        cycle.wait_for(2)
        assert scheduler.consecutive_failures == 0
        assert seconds_ahead(scheduler) == pytest.approx(42)


def test_trigger_now_cuts_a_chosen_delay_short(make) -> None:
    with freeze_time(START):
        scheduler, cycle = make([3600, 3600])
        scheduler.start()
        cycle.wait_for(1)
        scheduler.trigger_now()  # the long-poll waiter heard of a change
        cycle.wait_for(2)
        assert scheduler.next_run_at == START + dt.timedelta(seconds=3600)


def test_a_chosen_delay_within_the_guards_limit_is_not_taken_for_a_clock_jump(make) -> None:
    with freeze_time(START):
        scheduler, cycle = make([300], interval_s=60.0, backoff=Backoff(cap_s=300))
        scheduler.start()
        cycle.wait_for(1)
        assert scheduler.check_clock() is False
        assert scheduler.next_run_at == START + dt.timedelta(seconds=300)


def test_a_long_chosen_delay_is_not_taken_for_a_clock_jump(make) -> None:
    with freeze_time(START):
        # The sync engine's scheduler: 60 s interval, default backoff (cap 300 s); a policy
        # with sync_interval_s 900 makes the cycle answer 900 s and more.
        scheduler, cycle = make([900], interval_s=60.0, backoff=Backoff())
        scheduler.start()
        cycle.wait_for(1)
        assert scheduler.check_clock() is False  # the clock did not move at all
        assert scheduler.next_run_at == START + dt.timedelta(seconds=900)
