"""``edge-agent run``: every part of the agent in one process, supervised by systemd.

The shell of shells. It loads the config, opens the one state store, and runs side by side,
each on its own thread with one stop event:

- the **enforcer** (reconcile cycles onto the configured target: ``enforcer.Enforcer``),
- the **sync engine** when the config has a ``sync`` section (``sync.engine.SyncEngine``),
- the **drop-folder watcher** when ``drop_folders`` is set (``watch.DropWatcher`` importing
  through ``importer.import_dropped_file``),
- the **metrics** (``metrics.render``): written to ``metrics.textfile`` every
  ``STATUS_EVERY_S`` (atomically, for node_exporter's textfile collector) and served on
  ``GET /metrics`` at ``metrics.listen`` (loopback only).

Lifecycle (uvicorn's habits): ``READY=1`` once everything started; ``STATUS=`` with the
one-line verdict, refreshed every ``STATUS_EVERY_S``; ``WATCHDOG=1`` from the main loop while
every part's thread is alive (a part that died, or a wedged main loop, stops the pings and
systemd restarts the service); SIGTERM/SIGINT stop it (``STOPPING=1``; a running cycle may
finish, each part gets ``STOP_DEADLINE_S``; a second signal exits at once); SIGHUP reloads the
config (``RELOADING=1``, the parts are stopped and started again on the new config; a broken
config is logged and the running one stays in force). Signal handlers are restored on return.

Not here: what a cycle, a sync or an import does (their modules), systemd's socket
(``systemd.Notifier``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from edge_agent.clock import Clock
from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import ConfigError, EdgeAgentError, StateError
from edge_agent.files import atomic_write
from edge_agent.metrics import render as render_metrics
from edge_agent.state import StateStore
from edge_agent.status import assess
from edge_agent.systemd import Notifier

log = logging.getLogger(__name__)

TICK_S = 1.0
"""The main loop's period (shorter when the watchdog asks for pings more often)."""
STATUS_EVERY_S = 10.0
STOP_DEADLINE_S = 10.0
"""How long each part may take to stop before the daemon gives up waiting for it."""

OpenStore = Callable[[AgentConfig], StateStore]


@dataclass
class _Part:
    name: str
    thread: threading.Thread | None = None
    failed: bool = False

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and not self.failed


@dataclass
class _Generation:
    """The parts running on one config; replaced whole on a reload."""

    config: AgentConfig
    store: StateStore
    stop: threading.Event = field(default_factory=threading.Event)
    parts: list[_Part] = field(default_factory=list)
    stop_requests: list[Callable[[], None]] = field(default_factory=list)  # before joining
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # after joining

    def healthy(self) -> bool:
        return all(p.alive for p in self.parts)


class Daemon:
    def __init__(
        self,
        config_path: Path,
        clock: Clock,
        open_store: OpenStore,
        *,
        notifier: Notifier | None = None,
    ) -> None:
        self._config_path = config_path
        self._clock = clock
        self._open_store = open_store
        self._notifier = notifier or Notifier.from_environment()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._signals = 0

    # -- signals ---------------------------------------------------------------------------
    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(1)  # a second request: the operator means it
        self._stop.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Until SIGTERM/SIGINT; the exit code. ConfigError/StateError propagate at start."""
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_stop),
            signal.SIGINT: signal.signal(signal.SIGINT, self._on_stop),
            signal.SIGHUP: signal.signal(signal.SIGHUP, self._on_hup),
        }
        try:
            generation = self._start(load_config(self._config_path))
            self._notifier.ready(self._summary(generation))
            log.info("edge-agent running: %s", ", ".join(p.name for p in generation.parts))
            generation = self._loop(generation)
            self._notifier.stopping()
            if not self._finish(generation):
                _exit_now(0, "stopped, leaving parts that did not stop to the process's end")
            log.info("edge-agent stopped")
            return 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _loop(self, generation: _Generation) -> _Generation:
        tick = min(TICK_S, self._notifier.watchdog_interval_s or TICK_S)
        last_status = time.monotonic()
        self._write_metrics(generation)
        while not self._stop.wait(tick):
            if self._reload.is_set():
                self._reload.clear()
                generation = self._reloaded(generation)
            if generation.healthy():
                self._notifier.watchdog()
            else:
                dead = [p.name for p in generation.parts if not p.alive]
                log.error("part(s) stopped unexpectedly: %s; no watchdog ping", ", ".join(dead))
            if time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                self._notifier.status(self._summary(generation))
                self._write_metrics(generation)
        return generation

    def _reloaded(self, generation: _Generation) -> _Generation:
        self._notifier.reloading()
        try:
            config = load_config(self._config_path)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            self._notifier.ready(self._summary(generation))
            return generation
        if not self._finish(generation):
            # A wedged part still holds its resources (the sync lock, a cycle in the store):
            # starting its successor beside it would run both. Restart clean instead.
            _exit_now(1, "reload aborted: a part did not stop; exiting for a clean restart")
        try:
            fresh = self._start(config)
        except EdgeAgentError as exc:
            log.error("reload failed (%s); starting the previous configuration again", exc)
            fresh = self._start(generation.config)
        log.info("configuration reloaded: %s", ", ".join(p.name for p in fresh.parts))
        self._notifier.ready(self._summary(fresh))
        return fresh

    def _write_metrics(self, generation: _Generation) -> None:
        path = generation.config.metrics.textfile
        if path is None:
            return
        try:
            text = render_metrics(generation.store.view(), self._clock.now())
            atomic_write(path, text.encode("utf-8"), mode=0o644)
        except (OSError, StateError) as exc:
            log.warning("metrics file %s not written: %s", path, exc)

    def _summary(self, generation: _Generation) -> str:
        try:
            verdict, reason = assess(generation.store.view(), self._clock.now())
        except StateError as exc:
            return f"FAILING: state store: {exc}"
        return f"{verdict.name.replace('_', ' ')}: {reason}"

    # -- parts -----------------------------------------------------------------------------
    def _start(self, config: AgentConfig) -> _Generation:
        store = self._open_store(config)
        generation = _Generation(config, store)
        try:
            self._start_enforcer(generation)
            if config.sync is not None:
                self._start_sync(generation)
            if config.drop_folders:
                self._start_watch(generation)
            if config.metrics.listen is not None:
                self._start_metrics_endpoint(generation, config.metrics.listen)
        except BaseException:
            self._finish(generation)
            raise
        return generation

    def _spawn(self, generation: _Generation, name: str, body: Callable[[], Any]) -> None:
        part = _Part(name)

        def guarded() -> None:
            try:
                body()
            except Exception:
                part.failed = True
                log.exception("%s failed", name)

        part.thread = threading.Thread(target=guarded, name=name, daemon=True)
        generation.parts.append(part)
        part.thread.start()

    def _start_enforcer(self, generation: _Generation) -> None:
        from edge_agent.enforcer import Enforcer, build_target

        target = build_target(generation.config)
        enforcer = Enforcer(generation.store, target, self._clock, config=generation.config)
        self._spawn(generation, "enforce", lambda: enforcer.run(generation.stop))

    def _start_sync(self, generation: _Generation) -> None:
        from edge_agent.sync.engine import SyncEngine

        generation.held.enter_context(generation.store.sole("sync"))
        engine = SyncEngine(generation.config, generation.store, self._clock)
        self._spawn(generation, "sync", lambda: engine.run(generation.stop))

    def _start_watch(self, generation: _Generation) -> None:
        from edge_agent.usb import DROP_SUFFIXES, DropHandler, export_on_arrival
        from edge_agent.watch import DropWatcher

        config, store = generation.config, generation.store

        def on_arrival(folder: Path) -> None:
            export_on_arrival(folder, store=store, config=config, clock=self._clock)

        watcher = DropWatcher(
            config.drop_folders,
            DropHandler(store=store, config=config, clock=self._clock),
            suffixes=DROP_SUFFIXES,
            on_arrival=on_arrival,
        )
        generation.stop_requests.append(watcher.request_stop)
        self._spawn(generation, "watch", lambda: _watch(watcher, generation.stop))

    def _start_metrics_endpoint(self, generation: _Generation, listen: tuple[str, int]) -> None:
        store, clock = generation.store, self._clock

        class Handler(BaseHTTPRequestHandler):
            server_version = "edge-agent"
            sys_version = ""

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = render_metrics(store.view(), clock.now()).encode("utf-8")
                except StateError:
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 15 s is not news

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET

        try:
            server = Server(listen, Handler)
        except OSError as exc:
            raise ConfigError(
                f"metrics.listen {listen[0]}:{listen[1]}: cannot listen: {exc.strerror or exc}"
            ) from None
        server.daemon_threads = True
        generation.stop_requests.append(server.shutdown)
        generation.held.callback(server.server_close)
        self._spawn(generation, "metrics", server.serve_forever)

    def _finish(self, generation: _Generation) -> bool:
        """Stop every part of ``generation``; False if one did not stop within the deadline
        (its thread still runs: the store and locks are then left as they are)."""
        generation.stop.set()
        for request in generation.stop_requests:
            request()
        deadline = time.monotonic() + STOP_DEADLINE_S
        for part in generation.parts:
            if part.thread is None:
                continue
            part.thread.join(max(0.0, deadline - time.monotonic()))
            if part.thread.is_alive():
                log.warning("%s did not stop within %.0f s", part.name, STOP_DEADLINE_S)
        if any(p.thread is not None and p.thread.is_alive() for p in generation.parts):
            return False
        generation.held.close()
        generation.store.close()
        return True


def _exit_now(code: int, why: str) -> None:
    """End the process at once (a wedged thread would keep it alive at interpreter exit:
    APScheduler's worker threads are joined then). Store writes are SQLite transactions:
    whatever a killed thread was doing is rolled back, as after a kill -9."""
    log.error("%s", why)
    logging.shutdown()
    os._exit(code)


def _watch(watcher: Any, stop: threading.Event) -> None:
    try:
        watcher.run(stop)
    finally:
        watcher.stop()
