"""Log lines for the journal: one event per line, with its level, optionally JSON.

``configure`` sets up the root logger once, in the shell (``cli``). Every record becomes
exactly one line: a traceback or a message with a newline in it is folded (``\\n`` escaped)
so that a reader of ``journalctl`` never mistakes its second line for another event. When
stderr is the journal (``JOURNAL_STREAM`` names it, as systemd sets it), each line starts
with the syslog priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so
``journalctl -p warning`` works. ``json``: one object per line with ``time``, ``level``,
``logger``, ``message`` (and ``exception``), for log shippers.

Messages never carry secrets: the modules that log make sure of that (credentials are never
formatted into a message); this module only shapes lines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import TextIO

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
FORMATS = ("text", "json")
_HANDLER_NAME = "edge-agent"


def _priority(levelno: int) -> int:
    for level, priority in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return priority
    return 7


class LineFormatter(logging.Formatter):
    """``LEVEL logger: message`` on one line; optionally with the journal's priority."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\r", "").replace("\n", "\\n").replace("\0", "\\0")
        return f"<{_priority(record.levelno)}>{text}" if self._journal else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line (newlines inside strings are escaped by JSON itself)."""

    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        text = json.dumps(doc, ensure_ascii=False, sort_keys=True)  # NUL escaped as \u0000 by JSON
        return f"<{_priority(record.levelno)}>{text}" if self._journal else text


def stderr_is_journal(stream: TextIO = sys.stderr) -> bool:
    """True when ``stream`` is the journal's socket (``JOURNAL_STREAM`` is device:inode)."""
    marker = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = marker.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def configure(level: int, *, fmt: str = "text", stream: TextIO = sys.stderr) -> None:
    """Route every log record to ``stream``, one line each, at ``level`` and above."""
    journal = stderr_is_journal(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter(journal=journal) if fmt == "json" else LineFormatter(journal=journal)
    )
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:  # ours from an earlier call; others stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
