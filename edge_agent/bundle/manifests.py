"""Strict, bounded loading of the Kubernetes manifests a bundle carries.

A manifest file is UTF-8 YAML holding one or more documents; each non-empty document must
be a mapping with string ``apiVersion``, ``kind`` and ``metadata.name``. On top of
``yaml.SafeLoader`` (which never builds arbitrary objects) this loader refuses:

* explicit tags of any kind (``!!python/...``, ``!!binary``, ``!custom``, ``!``);
* merge keys (``<<``), duplicate keys and non-string keys;
* recursive aliases, more than ``max_aliases`` aliases, and documents whose alias-expanded
  size exceeds ``max_nodes`` nodes (the "billion laughs" shape);
* nesting deeper than ``max_depth``;
* integers outside the 64-bit range and ``.inf``/``.nan`` (Kubernetes holds neither).

YAML 1.1 timestamps stay strings, as the Kubernetes API server would see them.
Pure: bytes in, plain Python values out. Raises ``BundleError(YAML_INVALID)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from edge_agent.errors import BundleError
from edge_agent.errors import BundleErrorCode as Code

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True, slots=True)
class YamlLimits:
    max_depth: int = 64
    max_nodes: int = 200_000
    max_aliases: int = 100
    max_documents: int = 1000


class _Refusal(Exception):
    pass


class _Resolver(Resolver):
    pass


# Same implicit resolvers as SafeLoader, minus timestamps (kept as strings).
_Resolver.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in entries if tag != "tag:yaml.org,2002:timestamp"]
    for first, entries in Resolver.yaml_implicit_resolvers.items()
}


try:  # libyaml's event parser (C) under our own Python composer: about 4x faster
    from yaml._yaml import CParser as _EventSource
except ImportError:  # pragma: no cover - PyYAML built without libyaml

    class _EventSource(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, text: str) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)


class _StrictLoader(Composer, SafeConstructor, _Resolver, _EventSource):
    """Events from ``_EventSource``; composing (with the checks below) and constructing in Python."""

    def __init__(self, text: str, limits: YamlLimits) -> None:
        _EventSource.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        _Resolver.__init__(self)
        self._limits = limits
        self._depth = 0
        self._aliases = 0
        self._open_anchors: set[str] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > self._limits.max_aliases:
                raise _Refusal(f"more than {self._limits.max_aliases} aliases")
            if event.anchor in self._open_anchors:
                raise _Refusal(f"alias *{event.anchor} refers to a node that contains it")
            return Composer.compose_node(self, parent, index)
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.tag is not None:
            raise _Refusal(f"explicit tag {event.tag[:60]!r} is not allowed")
        self._depth += 1
        if self._depth > self._limits.max_depth:
            raise _Refusal(f"nesting deeper than {self._limits.max_depth} levels")
        anchor = event.anchor if isinstance(event, CollectionStartEvent) else None
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise _Refusal("merge keys (<<) are not allowed")
            if key_node.tag != _STR_TAG:
                raise _Refusal(f"mapping key {str(key_node.value)[:40]!r} is not a string")
            key = self.construct_object(key_node, deep=deep)
            if key in mapping:
                raise _Refusal(f"duplicate key {str(key)[:60]!r}")
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


_StrictLoader.add_constructor(
    "tag:yaml.org,2002:map",
    lambda loader, node: loader.construct_mapping(node, deep=True),  # type: ignore[arg-type]
)


def _expanded_size(node: Node, memo: dict[int, int], limit: int) -> int:
    known = memo.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo, limit)
            if size > limit:
                break
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, memo, limit) + _expanded_size(value, memo, limit)
            if size > limit:
                break
    memo[id(node)] = size
    return size


def load_manifests(data: bytes, *, path: str, limits: YamlLimits) -> tuple[dict[str, Any], ...]:
    """Parse and check one manifest file; return its non-empty documents in order."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(
            Code.YAML_INVALID, f"manifest {path!r} is not valid UTF-8 at byte {exc.start}"
        ) from None
    documents: list[dict[str, Any]] = []
    loader: _StrictLoader | None = None
    try:
        # The reader already refuses control characters, so it is built inside the try.
        loader = _StrictLoader(text, limits)
        count = 0
        while loader.check_node():
            node = loader.get_node()
            count += 1
            if count > limits.max_documents:
                raise _Refusal(f"more than {limits.max_documents} documents")
            if node is None:
                continue
            if _expanded_size(node, {}, limits.max_nodes) > limits.max_nodes:
                raise _Refusal(f"document expands to more than {limits.max_nodes} nodes")
            value = loader.construct_document(node)
            if value is None:
                continue
            _check_numbers(value, 0)
            documents.append(_check_object(value))
    except _Refusal as exc:
        raise BundleError(Code.YAML_INVALID, f"manifest {path!r}: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = (
            getattr(exc, "problem", None) or getattr(exc, "reason", None) or type(exc).__name__
        )
        raise BundleError(
            Code.YAML_INVALID, f"manifest {path!r} is not valid YAML{line}: {problem}"
        ) from None
    except RecursionError:
        raise BundleError(Code.YAML_INVALID, f"manifest {path!r} nests too deep") from None
    except ValueError as exc:  # e.g. an integer longer than sys.int_max_str_digits
        raise BundleError(
            Code.YAML_INVALID, f"manifest {path!r} holds a value that cannot be represented: {exc}"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    return tuple(documents)


_INT64 = range(-(2**63), 2**63)


def _check_numbers(value: Any, depth: int) -> None:
    """Numbers must be what Kubernetes (and JSON) can hold: int64 integers, finite floats."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if value not in _INT64:
            raise _Refusal("an integer is outside the 64-bit range Kubernetes accepts")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _Refusal("a number is infinite or not a number (.inf/.nan)")
    elif isinstance(value, dict):
        for item in value.values():
            _check_numbers(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_numbers(item, depth + 1)


def _check_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Refusal("a document is not a mapping (a Kubernetes object)")
    for field in ("apiVersion", "kind"):
        if not isinstance(value.get(field), str) or not value[field]:
            raise _Refusal(f"an object has no string {field}")
    metadata = value.get("metadata")
    if (
        not isinstance(metadata, dict)
        or not isinstance(metadata.get("name"), str)
        or not metadata["name"]
    ):
        raise _Refusal(f"a {value['kind'][:40]!r} object has no string metadata.name")
    return value
