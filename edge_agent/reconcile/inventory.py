"""The inventory: which objects the agent has applied, so that it prunes only its own.

One concept, after Flux's inventory package: a small value (refs with the API version each
was applied with) and pure functions over it — ``diff`` against the desired objects, ``merge``
the outcome of a cycle, JSON to and from the state store.

Rules:

* Only objects in the inventory are ever pruned. An object the agent never applied (or whose
  apply never succeeded) is never deleted, whatever labels it carries.
* Identity is the ``ObjectRef`` without the version (see ``objects``): an object applied as
  ``autoscaling/v1`` and now desired as ``autoscaling/v2`` is kept, not pruned.
* ``merge`` adds only objects whose apply succeeded and removes only objects whose delete
  succeeded (a 404 counts as deleted; the shell decides that). A failed prune stays in the
  inventory and is retried next cycle; a desired object that failed to apply keeps its old
  entry, if any.
* An entry records whether the object existed before the agent first applied it
  (``adopted``): a target must release such an object when it leaves the policy, never
  delete it. Re-applying an adopted object keeps it adopted.
* An entry records the ``digest`` of the manifest last applied (``manifest_digest``; ``""``
  when unknown, e.g. written by an older agent), so a target can re-apply when the policy
  changed even though the live object still contains every desired field (a field removed
  from the policy).

Does not: talk to a cluster or the store (the shell persists ``to_json()``), order deletions
beyond ``objects.delete_order``, or decide whether a prune is allowed (audit mode is the
caller's). Pure: no I/O, no clock.

Invariants: at most one entry per ref; ``Inventory.from_json(inv.to_json()) == inv``;
``to_json()`` is deterministic (entries sorted).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import StateCorruptError
from edge_agent.reconcile.objects import DesiredObject, ObjectRef, delete_order

FORMAT_VERSION = 1
_ENTRY_KEYS = frozenset({"group", "kind", "namespace", "name", "apiVersion"})
_OPTIONAL_KEYS = frozenset({"adopted", "digest"})  # absent in entries of older agents


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a manifest (sorted keys, no whitespace)."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, order=True)
class InventoryEntry:
    """One applied object and the API version it was applied with (needed to delete it).

    ``digest``: ``manifest_digest`` of the manifest last applied, ``""`` when unknown.
    ``adopted``: the object existed before the agent first applied it; it is released, never
    deleted.
    """

    ref: ObjectRef
    api_version: str
    digest: str = ""
    adopted: bool = False

    @classmethod
    def of(cls, obj: DesiredObject, *, adopted: bool = False) -> InventoryEntry:
        return cls(obj.ref, obj.api_version, manifest_digest(obj.manifest), adopted)

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {**self.ref.to_json(), "apiVersion": self.api_version}
        if self.digest:
            raw["digest"] = self.digest
        if self.adopted:
            raw["adopted"] = True
        return raw


@dataclass(frozen=True, slots=True)
class InventoryDiff:
    """What a cycle should do.

    ``to_apply``: every desired object, in the given order (server-side apply is idempotent;
    drift detection decides whether a write is needed). ``added``: the desired refs not yet
    in the inventory. ``to_prune``: entries applied before and no longer desired, in
    ``delete_order``.
    """

    to_apply: tuple[DesiredObject, ...]
    added: frozenset[ObjectRef]
    to_prune: tuple[InventoryEntry, ...]


@dataclass(frozen=True, slots=True)
class Inventory:
    """The set of objects the agent has applied and not yet successfully deleted."""

    entries: frozenset[InventoryEntry] = frozenset()
    _index: Mapping[ObjectRef, InventoryEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[ObjectRef, InventoryEntry] = {}
        for entry in sorted(self.entries):
            if entry.ref in index:
                raise ValueError(f"inventory holds {entry.ref} more than once")
            index[entry.ref] = entry
        object.__setattr__(self, "_index", index)

    @classmethod
    def of(cls, objects: Iterable[DesiredObject]) -> Inventory:
        return cls(frozenset(InventoryEntry.of(obj) for obj in objects))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[InventoryEntry]:
        return iter(sorted(self.entries))

    def __contains__(self, ref: object) -> bool:
        return ref in self._index

    @property
    def refs(self) -> frozenset[ObjectRef]:
        return frozenset(self._index)

    def api_version(self, ref: ObjectRef) -> str | None:
        """The version ``ref`` was last applied with, or None when it is not in the inventory."""
        entry = self._index.get(ref)
        return entry.api_version if entry is not None else None

    def entry(self, ref: ObjectRef) -> InventoryEntry | None:
        """The entry of ``ref``, or None when it is not in the inventory."""
        return self._index.get(ref)

    def diff(self, desired: Iterable[DesiredObject]) -> InventoryDiff:
        objects = tuple(desired)
        wanted = {obj.ref for obj in objects}
        have = self._index
        stale = [ref for ref in sorted(have) if ref not in wanted]
        return InventoryDiff(
            to_apply=objects,
            added=frozenset(wanted - have.keys()),
            to_prune=tuple(have[ref] for ref in delete_order(stale)),
        )

    def merge(
        self, *, applied: Iterable[DesiredObject | InventoryEntry], pruned: Iterable[ObjectRef]
    ) -> Inventory:
        """The inventory after a cycle.

        ``applied``: objects whose apply succeeded (their entry is added, or replaced with the
        new version and digest; a desired object keeps its old entry's ``adopted``, an entry
        is taken as given). ``pruned``: refs whose delete succeeded (or found nothing); they
        leave. Everything else stays as it was — a failed prune is retried next cycle.
        """
        result = dict(self._index)
        for ref in pruned:
            result.pop(ref, None)
        for item in applied:
            if isinstance(item, InventoryEntry):
                entry = item
            else:
                old = self._index.get(item.ref)
                entry = InventoryEntry.of(item, adopted=old is not None and old.adopted)
            result[entry.ref] = entry
        return Inventory(frozenset(result.values()))

    def by_ref(self) -> dict[ObjectRef, str]:
        """ref → api_version, a fresh dict."""
        return {ref: entry.api_version for ref, entry in self._index.items()}

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "entries": [entry.to_json() for entry in self]}

    @classmethod
    def from_json(cls, raw: Any) -> Inventory:
        """Parse what ``to_json`` wrote. Raises ``StateCorruptError`` on anything else."""
        if not isinstance(raw, Mapping) or set(raw) != {"version", "entries"}:
            raise StateCorruptError("inventory: expected an object with version and entries")
        if raw["version"] != FORMAT_VERSION:
            raise StateCorruptError(
                f"inventory: expected format version {FORMAT_VERSION}, found {raw['version']!r}"
            )
        items = raw["entries"]
        if not isinstance(items, list):
            raise StateCorruptError("inventory: entries is not a list")
        entries: set[InventoryEntry] = set()
        for index, item in enumerate(items):
            if (
                not isinstance(item, Mapping)
                or not _ENTRY_KEYS <= set(item) <= _ENTRY_KEYS | _OPTIONAL_KEYS
                or not all(isinstance(item[key], str) for key in _ENTRY_KEYS)
                or not item["kind"]
                or not item["name"]
                or not item["apiVersion"]
                or not isinstance(item.get("digest", ""), str)
                or not isinstance(item.get("adopted", False), bool)
            ):
                raise StateCorruptError(
                    f"inventory: entry {index} is not an object of {sorted(_ENTRY_KEYS)} strings"
                    f" (and optionally digest, a string, and adopted, a boolean)"
                )
            ref = ObjectRef(item["group"], item["kind"], item["namespace"], item["name"])
            entries.add(
                InventoryEntry(
                    ref, item["apiVersion"], item.get("digest", ""), item.get("adopted", False)
                )
            )
        try:
            return cls(frozenset(entries))
        except ValueError as exc:
            raise StateCorruptError(f"inventory: {exc}") from None
