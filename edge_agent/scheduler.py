"""The reconcile scheduler: run one cycle function forever, safely, on APScheduler 3.

What it guarantees:

- **Periodic** cycles at ``interval_s`` plus a random jitter in ``[0, jitter_s)``, so that
  sites that booted together do not hit their API servers in step.
- **Now on request** (``trigger_now``: a new policy was committed); a request made while a
  cycle runs is kept and served right after it, never lost.
- **Never two cycles at once** (one worker thread, and a lock of our own).
- **Failures back off**: a cycle that raises is logged, never crashes the process, and the
  next attempt comes after ``Backoff.delay_s`` (full jitter); a success resets the count.
- **The cycle may choose its next delay**: a cycle that returns a number of seconds is next
  run after exactly that long (the sync engine knows when its link allows the next request).
- **Clock jumps**: edge devices boot at 1970 and jump decades forward once NTP answers.
  APScheduler 3 with an ``IntervalTrigger`` then computes every missed run one by one (a
  365-day jump of a 1 s job took 38 s, with ``shutdown()`` hung meanwhile). Here the job's
  trigger always answers "now + delay", so a forward jump yields exactly one overdue run.
  A backward jump leaves the next run far in the future; ``check_clock`` (called by a
  guard thread every ``guard_interval_s`` on the monotonic clock, and directly by tests)
  pulls it back to now.

What it does not do: decide what a cycle does (the caller's function), or keep results.
The wall clock comes from ``datetime.now`` as APScheduler reads it (freezegun moves it in
tests: ``tick()`` then ``wakeup()`` runs what is due).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from edge_agent.backoff import Backoff

log = logging.getLogger(__name__)

_JOB_ID = "reconcile-cycle"


class _AfterDelay(BaseTrigger):  # type: ignore[misc]
    """A trigger whose next fire time is always "now + the current delay": one run per jump."""

    def __init__(self, delay_s: Callable[[], float]) -> None:
        self._delay_s = delay_s

    def get_next_fire_time(
        self, previous_fire_time: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime:
        return now + dt.timedelta(seconds=self._delay_s())


class CycleScheduler:
    """See the module docstring. ``start`` once, ``shutdown`` once (idempotent)."""

    def __init__(
        self,
        cycle: Callable[[], Any],
        *,
        interval_s: float,
        jitter_s: float = 0.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        guard_interval_s: float = 5.0,
    ) -> None:
        if interval_s <= 0 or jitter_s < 0:
            raise ValueError("interval_s must be positive and jitter_s not negative")
        self._cycle = cycle
        self._interval_s = interval_s
        self._jitter_s = jitter_s
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._guard_interval_s = guard_interval_s
        # Lock order: _state, then APScheduler's job-store lock; the scheduler thread takes
        # its job-store lock, then _counters (through the trigger). Never _state from there.
        self._state = threading.Lock()  # guards _in_cycle and _rerun_requested
        self._counters = threading.Lock()  # guards _failures and _completed
        self._failures = 0
        self._completed = 0
        self._chosen_s = 0.0  # the newest delay a cycle chose itself (the clock guard allows it)
        self._in_cycle = False
        self._rerun_requested = False
        self._stopped = threading.Event()
        self._guard: threading.Thread | None = None
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            # One worker runs cycles one after the other. max_instances=2 lets a run that comes
            # due just as the previous one returns be queued rather than skipped (APScheduler
            # counts an instance until its completion callback, a moment after it returns).
            job_defaults={"coalesce": True, "max_instances": 2, "misfire_grace_time": None},
            timezone=dt.UTC,
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, *, run_now: bool = True) -> None:
        self._scheduler.start()
        first = self._now() if run_now else None
        self._scheduler.add_job(
            self._run,
            trigger=_AfterDelay(self._next_delay_s),
            id=_JOB_ID,
            next_run_time=first or self._now() + dt.timedelta(seconds=self._next_delay_s()),
        )
        self._guard = threading.Thread(target=self._guard_loop, name="clock-guard", daemon=True)
        self._guard.start()

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop scheduling; with ``wait`` let a running cycle finish first. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
        if self._guard is not None:
            self._guard.join()

    # -- control -----------------------------------------------------------------------------
    def trigger_now(self) -> None:
        """Run a cycle as soon as possible (after the running one, if any)."""
        if self._stopped.is_set():
            return
        with self._state:  # decided and acted on atomically with the end of a cycle
            if self._in_cycle:
                self._rerun_requested = True
                return
            self._reschedule(self._now())

    def set_interval(self, interval_s: float, jitter_s: float | None = None) -> None:
        """New interval (a new policy may carry one); applies from the next scheduling."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._interval_s = interval_s
        if jitter_s is not None:
            self._jitter_s = jitter_s

    def check_clock(self) -> bool:
        """Pull the next run back to now if the wall clock jumped backwards; True if it did."""
        job = self._scheduler.get_job(_JOB_ID)
        if job is None or job.next_run_time is None:
            return False
        now = self._now()
        limit = max(self._interval_s + self._jitter_s, self._backoff.cap_s, self._chosen_s) + 1.0
        if (job.next_run_time - now).total_seconds() <= limit:
            return False
        log.warning(
            "wall clock went back: next reconcile was due at %s, it is %s; running now",
            job.next_run_time.isoformat(),
            now.isoformat(),
        )
        self._reschedule(now)
        return True

    def wakeup(self) -> None:
        """Make the scheduler look for due work now (used after the wall clock moved)."""
        self._scheduler.wakeup()

    @property
    def next_run_at(self) -> dt.datetime | None:
        job = self._scheduler.get_job(_JOB_ID)
        return None if job is None else job.next_run_time

    @property
    def cycles_completed(self) -> int:
        """Cycles finished (successful or not) and rescheduled since start."""
        with self._counters:
            return self._completed

    @property
    def consecutive_failures(self) -> int:
        with self._counters:
            return self._failures

    # -- internals ---------------------------------------------------------------------------
    def _now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def _next_delay_s(self) -> float:
        with self._counters:
            failures = self._failures
        if failures:
            return self._backoff.delay_s(failures, self._rng.random())
        return self._interval_s + self._rng.random() * self._jitter_s

    def _run(self) -> None:
        with self._state:
            if self._in_cycle:  # never two cycles at once, whoever called: run it next instead
                self._rerun_requested = True
                return
            self._in_cycle = True
        chosen: float | None = None
        try:
            result = self._cycle()
            if isinstance(result, int | float) and not isinstance(result, bool):
                chosen = max(0.0, float(result))
                self._chosen_s = chosen
        except Exception:  # a failing cycle must never take the agent down
            with self._counters:
                self._failures += 1
                failures = self._failures
            log.exception("reconcile cycle failed (%d in a row); retrying with backoff", failures)
        else:
            with self._counters:
                self._failures = 0
        delay = dt.timedelta(seconds=self._next_delay_s() if chosen is None else chosen)
        # The scheduler set the next run (now + delay) under its job-store lock when it
        # submitted this cycle; rescheduling here, under the same lock and under _state,
        # replaces it with a delay that knows this cycle's outcome, and cannot lose a
        # trigger_now() made meanwhile (it either set the flag or sees _in_cycle False).
        with self._state:
            rerun, self._rerun_requested = self._rerun_requested, False
            self._in_cycle = False
            now = self._now()
            self._reschedule(now if rerun else now + delay)
        with self._counters:
            self._completed += 1

    def _reschedule(self, when: dt.datetime) -> None:
        if self._stopped.is_set():
            return
        try:
            self._scheduler.modify_job(_JOB_ID, next_run_time=when)
        except Exception as exc:  # shutting down underneath us
            log.debug("not rescheduled: %s", exc)

    def _guard_loop(self) -> None:
        while not self._stopped.wait(self._guard_interval_s):  # monotonic: immune to jumps
            try:
                self.check_clock()
            except Exception:
                log.exception("clock guard failed")
