"""The reconcile scheduler, driven deterministically with freezegun: tick() then wakeup()."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from freezegun import freeze_time

from edge_agent.backoff import Backoff
from edge_agent.scheduler import CycleScheduler

UTC = dt.UTC


class Cycles:
    """A cycle function that counts runs, can fail on demand, and can be held open."""

    def __init__(self) -> None:
        self.runs = 0
        self.active = 0
        self.max_active = 0
        self.fail = False
        self.hold: threading.Event | None = None
        self._changed = threading.Condition()

    def __call__(self) -> None:
        with self._changed:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.hold is not None:
                self.hold.wait(10)
            if self.fail:
                raise RuntimeError("the cluster API is down")
        finally:
            with self._changed:
                self.active -= 1
                self.runs += 1
                self._changed.notify_all()

    scheduler: CycleScheduler

    def wait_for(self, runs: int, timeout_s: float = 5.0) -> None:
        """Wait until ``runs`` cycles ran and the scheduler has booked and rescheduled them."""
        deadline = time.perf_counter() + timeout_s
        while self.scheduler.cycles_completed < runs:
            assert time.perf_counter() < deadline, f"{self.runs} runs, expected {runs}"
            time.sleep(0.01)
        assert self.runs == runs

    def stays_at(self, runs: int, for_s: float = 0.3) -> None:
        time.sleep(for_s)  # a short real wait to show that nothing more ran
        assert self.runs == runs


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[CycleScheduler, Cycles]]]:
    made: list[CycleScheduler] = []

    def build(**kwargs: object) -> tuple[CycleScheduler, Cycles]:
        cycles = Cycles()
        options: dict[str, object] = {
            "interval_s": 60.0,
            "jitter_s": 0.0,
            "backoff": Backoff(base_s=5, cap_s=300, floor_s=1),
            "rng": random.Random(7),
            "guard_interval_s": 3600.0,  # tests call check_clock() themselves
        }
        options.update(kwargs)
        scheduler = CycleScheduler(cycles, **options)  # type: ignore[arg-type]
        cycles.scheduler = scheduler
        made.append(scheduler)
        return scheduler, cycles

    yield build
    for scheduler in made:
        scheduler.shutdown()


def test_runs_at_once_then_every_interval(make) -> None:
    with freeze_time("2026-11-24 12:00:00") as frozen:
        scheduler, cycles = make(interval_s=60.0)
        scheduler.start()
        cycles.wait_for(1)
        assert scheduler.next_run_at == dt.datetime(2026, 11, 24, 12, 1, tzinfo=UTC)
        frozen.tick(30)
        scheduler.wakeup()
        cycles.stays_at(1)
        frozen.tick(30)
        scheduler.wakeup()
        cycles.wait_for(2)


def test_jitter_stays_within_its_bound(make) -> None:
    with freeze_time("2026-11-24 12:00:00"):
        scheduler, cycles = make(interval_s=60.0, jitter_s=30.0)
        scheduler.start()
        cycles.wait_for(1)
        assert scheduler.next_run_at is not None
        delay = (scheduler.next_run_at - dt.datetime(2026, 11, 24, 12, tzinfo=UTC)).total_seconds()
        assert 60 <= delay < 90


def test_trigger_now_runs_a_cycle_without_waiting_for_the_interval(make) -> None:
    with freeze_time("2026-11-24 12:00:00"):
        scheduler, cycles = make()
        scheduler.start()
        cycles.wait_for(1)
        scheduler.trigger_now()
        cycles.wait_for(2)


def test_never_two_cycles_at_once_and_a_request_during_a_cycle_is_kept(make) -> None:
    with freeze_time("2026-11-24 12:00:00"):
        scheduler, cycles = make()
        cycles.hold = threading.Event()
        scheduler.start()
        deadline = time.perf_counter() + 5
        while cycles.active == 0:
            assert time.perf_counter() < deadline
            time.sleep(0.01)
        scheduler.trigger_now()  # a policy was committed while the cycle runs
        scheduler.trigger_now()
        cycles.hold.set()
        cycles.wait_for(2)  # the kept request ran right after
        cycles.stays_at(2)  # two requests during one cycle make one more cycle, not two
        assert cycles.max_active == 1


def test_a_failing_cycle_backs_off_and_a_success_resets(make) -> None:
    with freeze_time("2026-11-24 12:00:00") as frozen:
        scheduler, cycles = make(interval_s=600.0)
        cycles.fail = True
        scheduler.start()
        cycles.wait_for(1)
        assert scheduler.consecutive_failures == 1
        assert scheduler.next_run_at is not None
        first_wait = (scheduler.next_run_at - dt.datetime.now(UTC)).total_seconds()
        assert 1 <= first_wait <= 5  # backoff ceiling after one failure, not the 600 s interval
        frozen.tick(5)
        scheduler.wakeup()
        cycles.wait_for(2)
        assert scheduler.consecutive_failures == 2
        cycles.fail = False
        frozen.tick(10)
        scheduler.wakeup()
        cycles.wait_for(3)
        assert scheduler.consecutive_failures == 0
        wait = (scheduler.next_run_at - dt.datetime.now(UTC)).total_seconds()
        assert wait == pytest.approx(600)


def test_a_forward_jump_of_decades_runs_once_and_stays_responsive(make) -> None:
    with freeze_time("1970-01-01 00:00:00") as frozen:  # a board without an RTC
        scheduler, cycles = make(interval_s=1.0)
        scheduler.start()
        cycles.wait_for(1)
        frozen.move_to("2026-11-24 12:00:00")  # NTP answers: 56 years later
        started = time.perf_counter()
        scheduler.wakeup()
        cycles.wait_for(2, timeout_s=2.0)
        cycles.stays_at(2)  # one overdue run, not 1.7 billion
        assert time.perf_counter() - started < 2.0
        assert scheduler.next_run_at == dt.datetime(2026, 11, 24, 12, 0, 1, tzinfo=UTC)
        begun = time.perf_counter()
        scheduler.shutdown()
        assert time.perf_counter() - begun < 2.0


def test_a_backward_jump_is_caught_by_the_clock_check(make) -> None:
    with freeze_time("2026-11-24 12:00:00") as frozen:
        scheduler, cycles = make(interval_s=60.0)
        scheduler.start()
        cycles.wait_for(1)
        assert scheduler.check_clock() is False  # nothing odd yet
        frozen.move_to("2025-11-24 12:00:00")  # the clock is set back a year
        scheduler.wakeup()
        cycles.stays_at(1)  # APScheduler alone would wait a year
        assert scheduler.check_clock() is True
        cycles.wait_for(2)
        assert scheduler.next_run_at == dt.datetime(2025, 11, 24, 12, 1, tzinfo=UTC)


def test_shutdown_is_idempotent_and_stops_scheduling(make) -> None:
    with freeze_time("2026-11-24 12:00:00") as frozen:
        scheduler, cycles = make()
        scheduler.start()
        cycles.wait_for(1)
        scheduler.shutdown()
        scheduler.shutdown()
        scheduler.trigger_now()
        frozen.tick(120)
        cycles.stays_at(1)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CycleScheduler(lambda: None, interval_s=0)
