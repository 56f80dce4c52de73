"""systemd's notification protocol (sd_notify), without libsystemd.

``Notifier.from_environment()`` reads ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, when systemd asked for a watchdog, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.
Each ``send`` is one datagram of ``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``,
``WATCHDOG=1``, ``RELOADING=1``, ``STOPPING=1``). Without ``NOTIFY_SOCKET`` (not started by
systemd, or ``Type=simple``) every call does nothing, so the daemon runs the same either way.

The watchdog is armed only for this process: when ``WATCHDOG_PID`` names another process the
interval is ignored (sd_watchdog_enabled does the same), and no ``WATCHDOG=1`` is sent without
``WATCHDOG_USEC``. One exception, the one-file binary (scripts/build-binary.sh): PyInstaller's
bootloader is the process systemd started (the main PID, named by ``WATCHDOG_PID``); it
unpacks the bundle and runs our code in a child it waits for. There the watchdog is ours when
``WATCHDOG_PID`` is our parent *and* that parent is our bootloader: we are frozen with
``sys._MEIPASS`` a ``_MEI*`` folder (one-file, not one-folder) and the parent runs the same
executable file as we do (``/proc/PID/exe``). Never for any other parent. The unit must then
accept notifications from the child (``NotifyAccess=all``, scripts/edge-agent.service).

Sends never block (a full socket queue drops the message) and a send that fails is logged
once and never raised: the service must not stall or die because its supervisor's socket is
slow or went away.

Not here: deciding when the daemon is healthy (``daemon`` does), socket activation.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

MAX_STATUS_CHARS = 200


def watchdog_is_ours(watchdog_pid: str, *, pid: int, bootloader_pid: int | None) -> bool:
    """Whether systemd's watchdog (``WATCHDOG_PID``, as text; empty when unset) is this
    process's: unset, our own pid, or the pid of the one-file bootloader that runs us."""
    if not watchdog_pid:
        return True
    if not watchdog_pid.isdigit():
        return False
    return int(watchdog_pid) == pid or (
        bootloader_pid is not None and int(watchdog_pid) == bootloader_pid
    )


def onefile_bootloader_pid(runtime: Any = sys) -> int | None:
    """The pid of our parent when it is the PyInstaller one-file bootloader that started us,
    else None. ``runtime`` is the ``sys`` module (its ``frozen`` and ``_MEIPASS``)."""
    if not getattr(runtime, "frozen", False):
        return None
    bundle = getattr(runtime, "_MEIPASS", None)
    # One-file: the bundle was unpacked into a fresh _MEIxxxxxx folder (one-folder mode
    # runs from the folder beside the executable, in this very process).
    if not isinstance(bundle, str) or not os.path.basename(bundle).startswith("_MEI"):
        return None
    parent = os.getppid()
    try:
        # The same executable file: the running images, not paths (an upgrade that
        # replaced the file since, or a symlink, cannot confuse it).
        same = os.path.samefile(f"/proc/{parent}/exe", "/proc/self/exe")
    except OSError:  # gone, or not ours to look at
        return None
    return parent if same else None


class Notifier:
    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = address
        self.watchdog_usec = watchdog_usec
        self._warned = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not (address.startswith("/") or address.startswith("@")):
            log.warning("NOTIFY_SOCKET %r is neither a path nor @abstract; not notifying", address)
            address = None
        usec_text = env.get("WATCHDOG_USEC", "")
        pid_text = env.get("WATCHDOG_PID", "")
        usec = int(usec_text) if usec_text.isdigit() and int(usec_text) > 0 else None
        # /proc is read only when WATCHDOG_PID names another process.
        bootloader = onefile_bootloader_pid() if pid_text not in ("", str(os.getpid())) else None
        if not watchdog_is_ours(pid_text, pid=os.getpid(), bootloader_pid=bootloader):
            usec = None  # the watchdog is another process's
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half the watchdog timeout, as systemd recommends."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    # Each returns whether the message was sent.
    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        """A ping, only when systemd armed a watchdog for this process."""
        return self.watchdog_usec is not None and self.send(WATCHDOG="1")

    def reloading(self) -> bool:
        return self.send(RELOADING="1", STATUS="reloading the configuration")

    def stopping(self) -> bool:
        return self.send(STOPPING="1", STATUS="stopping")

    def send(self, **fields: str) -> bool:
        """One datagram; True if it was sent."""
        if self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            # One printable line: a newline would start another field, and systemd drops a
            # whole datagram with a NUL in it (READY=1 with it).
            text = "".join(ch for ch in " ".join(value.split()) if ch.isprintable())
            if key == "STATUS":
                text = text[:MAX_STATUS_CHARS]
            lines.append(f"{key}={text}")
        address = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block: a supervisor that does not read its socket (a full queue)
                # must not stall the main loop, nor its handling of SIGTERM.
                sock.setblocking(False)
                sock.sendto("\n".join(lines).encode("utf-8", errors="replace"), address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self._address, exc.strerror or exc)
                self._warned = True
            return False
        return True
