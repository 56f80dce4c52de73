"""``logs``: one event per line, levels for the journal, optional JSON."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.logs import JsonFormatter, LineFormatter, configure, stderr_is_journal


@pytest.fixture
def record() -> Iterator[logging.LogRecord]:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys

        info = sys.exc_info()
    yield logging.LogRecord(
        "edge_agent.sync", logging.WARNING, __file__, 1, "line one\nline %s", ("two",), info
    )


def test_text_is_one_line_with_its_level(record: logging.LogRecord) -> None:
    text = LineFormatter(journal=False).format(record)
    assert "\n" not in text and text.startswith("WARNING edge_agent.sync: line one\\nline two")
    assert "ValueError: bad\\nthing" in text


def test_json_is_one_object_per_line(record: logging.LogRecord) -> None:
    text = JsonFormatter(journal=False).format(record)
    assert "\n" not in text
    doc = json.loads(text)
    assert doc["level"] == "warning" and doc["logger"] == "edge_agent.sync"
    assert doc["message"] == "line one\nline two" and "ValueError" in doc["exception"]


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.ERROR, "<3>"),
        (logging.WARNING, "<4>"),
        (logging.INFO, "<6>"),
        (logging.DEBUG, "<7>"),
    ],
)
def test_journal_priority_prefix(level: int, prefix: str) -> None:
    record = logging.LogRecord("x", level, __file__, 1, "m", (), None)
    assert LineFormatter(journal=True).format(record).startswith(prefix)
    assert JsonFormatter(journal=True).format(record).startswith(prefix + "{")


def test_the_journal_is_recognised_by_device_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stream").open("w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert stderr_is_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
        assert not stderr_is_journal(stream)
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not stderr_is_journal(io.StringIO())


def test_configure_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        configure(logging.INFO, fmt="json", stream=first)
        configure(logging.INFO, fmt="text", stream=second)
        logging.getLogger("edge_agent.test").info("hello")
        assert first.getvalue() == "" and "INFO edge_agent.test: hello" in second.getvalue()
        assert all(h in root.handlers for h in before)
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
