"""``FakeSystemd``: the service-manager side of systemd, for tests of ``edge-agent run``.

One AF_UNIX datagram socket (give its path as ``NOTIFY_SOCKET``). Every datagram is read by a
thread as it arrives, with the sender's pid (``SO_PASSCRED``: the kernel attaches
``SCM_CREDENTIALS`` to each one, as it does for systemd), and kept in order: ``messages`` (the
accepted ones, each a dict of its ``KEY=VALUE`` lines), ``received`` (all, as ``Message``) and
``rejected``.

Used alone (``FakeSystemd(folder)``, the process started by the test) every message is
accepted. ``start(argv, settings)`` starts a process as systemd starts a ``Type=notify``
service's main process, with the unit's ``Service`` settings (``ServiceSettings.from_unit``
reads them from a unit file, so a test checks the shipped unit, not a copy):

- ``CacheDirectory=`` created (mode ``CacheDirectoryMode=``) under a cache root given for
  ``%C``; ``Environment=`` set; ``ExecStartPre=`` commands run first (``-`` prefix: failure
  ignored); ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (the main pid: set by a
  shell that then execs the command, keeping its pid, as systemd sets it between fork and exec);
- **NotifyAccess**: ``none`` rejects everything; ``main`` (and ``exec``: no control processes
  here) accepts only the main pid; ``all`` the main pid or any descendant (a process of the
  service's cgroup: here its process tree, followed through ``/proc``). Rejections are kept,
  with systemd's reason;
- **the watchdog**: armed when ``READY=1`` is accepted (systemd runs it only in the running and
  reloading states), pushed back ``WATCHDOG_USEC`` by each accepted ``WATCHDOG=1``; a deadline
  passed without one is a watchdog failure (``watchdog_failures``: when; it then waits for the
  next ping). Disarmed once a stop begins;
- ``reload()`` is ``ExecReload=/bin/kill -HUP $MAINPID``;
- ``stop()`` per **KillMode**: ``control-group`` sends SIGTERM to every process of the tree,
  ``mixed`` and ``process`` to the main process only; after ``TimeoutStopSec`` the survivors are
  SIGKILLed (``process``: the main one only) and, once the main process is gone,
  ``control-group`` and ``mixed`` SIGKILL what is left of the tree (``signals``: all sent).

Not faithful: no cgroup (the tree is sampled every 50 ms, so a process that lives less than
that may be missed), no ``MAINPID=``, no ``TimeoutStartSec``, no restarts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_UNITS_S = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0}
_UNITS_S |= {"": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def parse_timespan_s(text: str) -> float:
    """systemd's time span ("60", "500ms", "1min 30s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"not a systemd time span: {text!r}")
    return sum(float(number) * _UNITS_S[unit] for number, unit in parts)


@dataclass(frozen=True)
class ServiceSettings:
    """What of a unit's ``[Service]`` section the fake acts on."""

    notify_access: str = "none"
    kill_mode: str = "control-group"
    watchdog_usec: int | None = None
    timeout_stop_s: float = 90.0
    environment: Mapping[str, str] = field(default_factory=dict)
    cache_directories: tuple[Path, ...] = ()
    cache_directory_mode: int = 0o755
    exec_start_pre: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def from_unit(cls, path: Path, *, cache_root: Path) -> ServiceSettings:
        """The settings of the unit file at ``path``, ``%C`` standing for ``cache_root``."""
        keys = _service_section(path.read_text(encoding="utf-8"))

        def expand(value: str) -> str:
            def one(found: re.Match[str]) -> str:
                if found.group(1) == "%":
                    return "%"
                if found.group(1) == "C":
                    return str(cache_root)
                raise ValueError(f"{path}: specifier %{found.group(1)} is not simulated")

            return re.sub(r"%(.)", one, value)

        def last(key: str, default: str) -> str:
            values = keys.get(key, [])
            return values[-1] if values else default

        environment: dict[str, str] = {}
        for line in keys.get("Environment", []):
            for assignment in shlex.split(expand(line)):
                name, _, value = assignment.partition("=")
                environment[name] = value
        watchdog = last("WatchdogSec", "")
        return cls(
            notify_access=last("NotifyAccess", "none"),
            kill_mode=last("KillMode", "control-group"),
            watchdog_usec=round(parse_timespan_s(watchdog) * 1e6) if watchdog else None,
            timeout_stop_s=parse_timespan_s(last("TimeoutStopSec", "90")),
            environment=environment,
            cache_directories=tuple(
                cache_root / name
                for line in keys.get("CacheDirectory", [])
                for name in line.split()
            ),
            cache_directory_mode=int(last("CacheDirectoryMode", "0755"), 8),
            exec_start_pre=tuple(
                tuple(shlex.split(expand(line))) for line in keys.get("ExecStartPre", [])
            ),
        )

    def replace(self, **changes: Any) -> ServiceSettings:
        return dataclasses.replace(self, **changes)


def _service_section(text: str) -> dict[str, list[str]]:
    """Key → values (in order; an empty assignment resets the list) of ``[Service]``."""
    keys: dict[str, list[str]] = {}
    section = ""
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            key, value = key.strip(), value.strip()
            keys[key] = [*keys.get(key, []), value] if value else []
    return keys


@dataclass(frozen=True)
class Message:
    pid: int
    fields: dict[str, str]
    at: float  # time.monotonic()
    accepted: bool
    reason: str = ""


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (pid and start time name one process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class FakeSystemd:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.02)
        self.messages: list[dict[str, str]] = []  # accepted, in order
        self.received: list[Message] = []
        self.rejected: list[Message] = []
        self.watchdog_failures: list[float] = []
        self.signals: list[tuple[int, signal.Signals]] = []
        self.settings: ServiceSettings | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.state = "inactive"  # activating, running, reloading, deactivating
        self.tree: dict[int, int | None] = {}  # pid → start time: every process seen in it
        self._deadline: float | None = None
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="fake-systemd", daemon=True)
        self._reader.start()

    # -- the service ----------------------------------------------------------------------
    def start(
        self,
        argv: Sequence[str],
        settings: ServiceSettings,
        *,
        env: Mapping[str, str] | None = None,
        output: IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as the service's main process (see the module docstring)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        for folder in settings.cache_directories:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(settings.cache_directory_mode)
        environment = {**(os.environ if env is None else env), **settings.environment}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            environment.pop(name, None)
        for command in settings.exec_start_pre:
            ignore = command[0].startswith("-")
            argv0 = command[0].lstrip("-")
            assert not argv0.startswith(("+", "!", "@", ":")), f"not simulated: {command[0]}"
            done = subprocess.run([argv0, *command[1:]], env=environment, check=False)
            assert ignore or done.returncode == 0, f"ExecStartPre {command} failed"
        environment["NOTIFY_SOCKET"] = str(self.path)
        wrapper: list[str] = []
        if settings.watchdog_usec is not None:
            environment["WATCHDOG_USEC"] = str(settings.watchdog_usec)
            wrapper = ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh"]
        with self._changed:
            self.settings = settings
            self.state = "activating"
            self.tree = {}
            self._deadline = None
            self.process = subprocess.Popen(
                [*wrapper, *argv],
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
            )
            self.tree[self.process.pid] = _start_time(self.process.pid)
        return self.process

    @property
    def main_pid(self) -> int:
        assert self.process is not None, "no service started"
        return self.process.pid

    def reload(self) -> None:
        """``ExecReload=/bin/kill -HUP $MAINPID``."""
        self._signal(self.main_pid, signal.SIGHUP)

    def stop(self, timeout_s: float | None = None) -> int:
        """Stop per ``KillMode=``; the main process's exit status (negative: its signal)."""
        assert self.process is not None and self.settings is not None, "no service started"
        settings = self.settings
        with self._changed:
            self.state = "deactivating"
            self._deadline = None
        self._sample_tree()
        if settings.kill_mode == "control-group":
            for pid in self._alive_tree():
                self._signal(pid, signal.SIGTERM)
        elif settings.kill_mode in ("mixed", "process"):
            self._signal(self.main_pid, signal.SIGTERM)
        else:
            raise AssertionError(f"KillMode={settings.kill_mode} is not simulated")
        try:
            status = self.process.wait(settings.timeout_stop_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            targets = [self.main_pid]
            if settings.kill_mode != "process":
                targets = self._alive_tree()
            for pid in targets:
                self._signal(pid, signal.SIGKILL)
            status = self.process.wait(10)
        if settings.kill_mode != "process":
            for pid in self._alive_tree():  # the final SIGKILL of what is left
                self._signal(pid, signal.SIGKILL)
        with self._changed:
            self.state = "inactive"
        return status

    def kill_all(self) -> None:
        """SIGKILL every process of the service at once (``kill -9`` of its cgroup)."""
        self._sample_tree()
        for pid in self._alive_tree():
            self._signal(pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)
        with self._changed:
            self.state = "inactive"
            self._deadline = None

    def processes(self) -> list[int]:
        """The service's live processes (the main one first)."""
        self._sample_tree()
        return self._alive_tree()

    def _signal(self, pid: int, signum: signal.Signals) -> None:
        self.signals.append((pid, signum))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def _alive_tree(self) -> list[int]:
        with self._changed:
            known = list(self.tree.items())
        return [pid for pid, start in known if start and _start_time(pid) == start]

    def _sample_tree(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        found = {pid: _start_time(pid) for pid in _descendants(process.pid)}
        with self._changed:
            for pid, start in found.items():
                self.tree.setdefault(pid, start)

    # -- notifications --------------------------------------------------------------------
    def _verdict(self, pid: int) -> str:
        """Why a message from ``pid`` is rejected ("" when it is accepted)."""
        if self.process is None or self.settings is None:
            return ""
        access = self.settings.notify_access
        if access == "none":
            return "reception disabled (NotifyAccess=none)"
        if pid == self.process.pid:
            return ""
        if access in ("main", "exec"):
            return f"reception only permitted for main PID {self.process.pid}"
        ancestor: int | None = pid
        while ancestor is not None and ancestor > 1:
            if ancestor == self.process.pid:
                return ""
            ancestor = _parent(ancestor)
        if pid in self.tree:
            return ""
        return f"PID {pid} does not belong to the service"

    def _read(self) -> None:
        space = socket.CMSG_SPACE(_CREDENTIALS.size)
        last_sample = 0.0
        while not self._closed.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, space)
            except TimeoutError:
                data = None
            except OSError:
                return  # closed
            now = time.monotonic()
            if now - last_sample >= 0.05:
                last_sample = now
                self._sample_tree()
            with self._changed:
                if data is not None:
                    self._take(data, ancillary, now)
                if self._deadline is not None and now > self._deadline:
                    self.watchdog_failures.append(now)
                    self._deadline = None  # systemd would kill it; we wait for the next ping
                self._changed.notify_all()

    def _take(self, data: bytes, ancillary: list[tuple[int, int, bytes]], now: float) -> None:
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _CREDENTIALS.unpack(payload[: _CREDENTIALS.size])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        reason = self._verdict(pid)
        message = Message(pid, fields, now, accepted=not reason, reason=reason)
        self.received.append(message)
        if reason:
            self.rejected.append(message)
            return
        self.messages.append(fields)
        if self.settings is None or self.state in ("inactive", "deactivating"):
            return
        if fields.get("RELOADING") == "1":
            self.state = "reloading"
        if fields.get("READY") == "1":
            self.state = "running"
            if self._deadline is None and self.settings.watchdog_usec is not None:
                self._deadline = now + self.settings.watchdog_usec / 1e6
        if fields.get("STOPPING") == "1":
            self.state = "deactivating"
            self._deadline = None
        if fields.get("WATCHDOG") == "1" and self._deadline is not None:
            assert self.settings.watchdog_usec is not None
            self._deadline = now + self.settings.watchdog_usec / 1e6

    # -- reading what was said ------------------------------------------------------------
    def drain(self) -> list[dict[str, str]]:
        """Every accepted message so far (waits up to 0.2 s for one more)."""
        with self._changed:
            count = len(self.received)
            self._changed.wait_for(lambda: len(self.received) > count, timeout=0.2)
            return list(self.messages)

    def seen(self, key: str, value: str | None = None) -> int:
        """How many accepted messages set ``key`` (to ``value``, if given)."""
        return sum(1 for m in self.drain() if key in m and (value is None or m[key] == value))

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
        self._reader.join(5)
        if self.process is not None and self.process.poll() is None:
            self.kill_all()
