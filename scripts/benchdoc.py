"""One section of docs/benchmarks.md per benchmark script, replaced between its markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def replace_section(begin: str, end: str, text: str, doc: Path = DOC) -> None:
    """Put ``text`` (which starts with ``begin`` and ends with ``end``) in place of the
    section between those markers, or append it if the document has none yet."""
    previous = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    start, stop = previous.find(begin), previous.find(end)
    if start >= 0 and stop > start:
        updated = previous[:start] + text.rstrip("\n") + previous[stop + len(end) :]
    else:
        updated = previous.rstrip("\n") + "\n\n" + text
    doc.write_text(updated, encoding="utf-8")
