"""``FakeSystemd``: the notification side of systemd, for tests of ``edge-agent run``.

One AF_UNIX datagram socket (give its path as ``NOTIFY_SOCKET``); every datagram received is
kept, in order, as a dict of its ``KEY=VALUE`` lines.
"""

from __future__ import annotations

import socket
from pathlib import Path


class FakeSystemd:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        """Every message so far (waits up to 0.2 s for one more)."""
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def seen(self, key: str, value: str | None = None) -> int:
        """How many messages set ``key`` (to ``value``, if given)."""
        return sum(1 for m in self.drain() if key in m and (value is None or m[key] == value))

    def close(self) -> None:
        self.sock.close()
