"""``systemd.Notifier`` against a real datagram socket, and the daemon's watchdog decision."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.daemon import Daemon, _Generation, _Part
from edge_agent.systemd import (
    MAX_STATUS_CHARS,
    Notifier,
    onefile_bootloader_pid,
    watchdog_is_ours,
)
from tests.conftest import REPO, FakeClock, Site


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


def test_our_parent_never_owns_the_watchdog_unless_it_is_our_bootloader() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "4000000",
        "WATCHDOG_PID": str(os.getppid()),
    }
    assert Notifier.from_environment(env).watchdog_interval_s is None  # not frozen


@pytest.mark.parametrize(
    ("watchdog_pid", "bootloader_pid", "ours"),
    [
        ("", None, True),  # unset: whoever reads it (sd_watchdog_enabled does the same)
        ("100", None, True),  # this process
        ("99", None, False),  # another process, our parent included
        ("99", 99, True),  # the one-file bootloader that runs us
        ("98", 99, False),  # any other process, with a bootloader or without
        ("99x", 99, False),
        ("-99", 99, False),
    ],
)
def test_the_watchdog_decision(watchdog_pid: str, bootloader_pid: int | None, ours: bool) -> None:
    assert watchdog_is_ours(watchdog_pid, pid=100, bootloader_pid=bootloader_pid) is ours


class Runtime:
    """Stands in for ``sys`` in onefile_bootloader_pid: the markers PyInstaller sets."""

    def __init__(self, **markers: object) -> None:
        self.__dict__.update(markers)


@pytest.mark.parametrize(
    "runtime",
    [
        sys,  # not frozen: this interpreter
        Runtime(frozen=True),  # no bundle folder
        Runtime(frozen=True, _MEIPASS="/opt/edge-agent/_internal"),  # one-folder build
        Runtime(frozen=False, _MEIPASS="/tmp/_MEIabc123"),
    ],
)
def test_no_bootloader_without_the_onefile_markers(runtime: object) -> None:
    # Our parent runs the same executable in none of these cases either way: it is the
    # markers that decide here.
    assert onefile_bootloader_pid(runtime) is None


CHILD = (
    "from tests.unit.test_systemd_notify import Runtime\n"
    "from edge_agent.systemd import onefile_bootloader_pid\n"
    "print(onefile_bootloader_pid(Runtime(frozen=True, _MEIPASS='/tmp/_MEIabc123')))\n"
)


def test_the_bootloader_is_a_parent_running_our_executable() -> None:
    # A real child of this interpreter runs the same executable as its parent (us), as the
    # one-file child does its bootloader's: with the one-file markers, we are its bootloader.
    child = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert child.stdout.strip() == str(os.getpid())


def test_a_parent_running_another_executable_is_not_a_bootloader() -> None:
    # The same child under a shell that waits for it: the parent is /bin/sh, not us.
    child = subprocess.run(
        ["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, CHILD],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert child.stdout.strip() == "None"


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
