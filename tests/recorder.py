"""``Recorder``: a bundle callback for watcher tests that records every offer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


class Recorder:
    """A bundle callback that records each offer and answers from ``verdict``."""

    def __init__(self, verdict: Callable[[Path], bool] = lambda path: True) -> None:
        self.offers: list[Path] = []
        self._verdict = verdict
        self._changed = threading.Condition()

    def __call__(self, path: Path) -> bool:
        with self._changed:
            self.offers.append(path)
            self._changed.notify_all()
        return self._verdict(path)

    def count(self, path: Path) -> int:
        with self._changed:
            return self.offers.count(path)

    def wait_for(self, path: Path, times: int = 1, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.offers.count(path) < times:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{path} offered {self.offers.count(path)}x, not {times}x")
                self._changed.wait(min(left, 0.02))
