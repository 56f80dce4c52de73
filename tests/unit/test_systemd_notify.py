"""``systemd.Notifier`` against a real datagram socket, and the daemon's watchdog decision."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.daemon import Daemon, _Generation, _Part
from edge_agent.systemd import MAX_STATUS_CHARS, Notifier
from tests.conftest import FakeClock, Site


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled and notifier.send(READY="1") is False
    assert notifier.watchdog_interval_s is None


def test_ready_status_one_line_and_bounded(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    notifier.ready("HEALTHY: revision 3\nFORGED=1 " + "x" * 500)
    message = received(sock)
    assert message["READY"] == "1" and "FORGED" not in message
    assert len(message["STATUS"]) == MAX_STATUS_CHARS


def test_abstract_namespace_socket() -> None:
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}).send(WATCHDOG="1")
        assert received(sock) == {"WATCHDOG": "1"}


@pytest.mark.parametrize(
    ("pid", "armed"), [(None, True), (str(os.getpid()), True), ("1", False), ("x", False)]
)
def test_the_watchdog_is_armed_only_for_this_process(pid: str | None, armed: bool) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "4000000"}
    if pid is not None:
        env["WATCHDOG_PID"] = pid
    notifier = Notifier.from_environment(env)
    assert (notifier.watchdog_interval_s == 2.0) is armed


def test_a_gone_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "absent")})
    assert notifier.send(READY="1") is False
    assert notifier.send(READY="1") is False


@pytest.mark.parametrize("part_alive", [True, False])
def test_the_main_loop_pings_only_while_every_part_lives(
    listener: tuple[socket.socket, str], site: Site, clock: FakeClock, part_alive: bool
) -> None:
    sock, path = listener
    sock.settimeout(0.3)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    daemon = Daemon(site.config_path, clock, lambda config: site.open_store(), notifier=notifier)
    release = threading.Event()
    worker = threading.Thread(target=release.wait if part_alive else (lambda: None))
    worker.start()
    worker.join(0 if part_alive else 5)
    with site.open_store() as store:
        generation = _Generation(site.config, store, parts=[_Part("enforce", worker)])
        loop = threading.Thread(target=daemon._loop, args=(generation,))
        loop.start()
        pings = 0
        try:
            for _ in range(5):
                with contextlib.suppress(TimeoutError):
                    pings += received(sock).get("WATCHDOG") == "1"
        finally:
            daemon._stop.set()
            release.set()
            loop.join(5)
    assert (pings >= 3) if part_alive else (pings == 0)
