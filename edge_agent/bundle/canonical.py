"""Canonical JSON: one byte string for one value, and a strict decoder for it.

Canonical form (normative in docs/bundle-format.md): UTF-8, object keys sorted by code
point, no insignificant white space, no floats, no NaN, strings escaped as Python's
``json`` does with ``ensure_ascii=False``. The decoder rejects anything a canonical
encoder would not produce: duplicate keys, floats, constants, invalid UTF-8, excessive
nesting, and finally any text that does not re-encode to exactly the same bytes.

Pure: bytes in, values out. Raises ``ValueError`` with a one-line reason; callers wrap it
into the error of their own concern.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32


def encode(value: Any) -> bytes:
    """Encode a JSON-compatible value (dict/list/str/int/bool/None) canonically."""
    _check_value(value, 0)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def decode(data: bytes, *, max_bytes: int, require_canonical: bool = True) -> Any:
    """Decode strictly; with ``require_canonical`` the bytes must be the canonical form."""
    if len(data) > max_bytes:
        raise ValueError(f"document is {len(data)} bytes, limit is {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"document is not valid UTF-8 at byte {exc.start}") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except RecursionError:
        raise ValueError("document nests too deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"document is not JSON: {exc.msg} at line {exc.lineno}") from None
    _check_value(value, 0)
    if require_canonical and encode(value) != data:
        raise ValueError("document is not in canonical JSON form")
    return value


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:64]!r}")
        result[key] = item
    return result


def _reject_float(text: str) -> Any:
    raise ValueError(f"floating-point number {text[:32]!r} is not allowed")


def _reject_constant(text: str) -> Any:
    raise ValueError(f"constant {text!r} is not allowed")


def _check_value(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"document nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("object key is not a string")
            _check_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
    elif isinstance(value, float):
        raise ValueError("floating-point numbers are not allowed")
    elif not isinstance(value, str | int | bool) and value is not None:
        raise ValueError(f"value of type {type(value).__name__} is not JSON")
