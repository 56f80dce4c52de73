"""The Kubernetes API target: enforce desired objects onto a cluster with server-side apply.

One concept: one reconcile cycle against one API server, through the official ``kubernetes``
client's ``ApiClient.call_api`` with plain dicts (never the typed API classes: they are slow
to import and reject fields newer than the client). ``kubernetes`` is imported lazily, only
by the constructors, so importing this module costs nothing in processes that do not enforce.

A cycle is a pipeline:

1. **List**: for every kind among the desired objects and the inventory, discovery (cached)
   and one LIST with ``labelSelector=MANAGED_SELECTOR`` (across namespaces for namespaced
   kinds); never a GET per object known to the agent. List items get ``apiVersion``/``kind``
   filled in (a real server omits them). Any failure here (refused, timeout, 5xx, 401/403)
   raises ``TargetUnavailableError`` before anything is written; a kind that is not served
   (its CRD not applied yet) lists as empty.
2. **Plan**: every desired object and inventory entry is keyed by its *resolved* identity (a
   namespaced kind without namespace is in ``default``; a cluster-scoped kind has none), so
   adding or dropping ``namespace: default`` names the same object. An entry is pruned only
   when its resolved key is not desired; another ref of a desired object leaves the
   inventory without a DELETE once that object is applied.
3. **Apply** in ``apply_order``: nothing is written (UNCHANGED) when ``drift.detect(manifest,
   live)`` finds no drift *and* the manifest's digest equals the inventory entry's (the
   manifest last applied). A changed digest means the policy changed — maybe a field was
   removed, which drift (desired ⊆ live) cannot see — so the object is applied again and
   server-side apply removes what the agent no longer sends: HEALED "policy changed". An
   entry without a digest (older agent) or no entry at all counts as changed: applied once.
   Otherwise, in enforce mode, a server-side apply (field manager ``edge-agent``,
   ``force=true``) → CREATED or HEALED; in audit mode DRIFTED (and nothing, the inventory
   included, changes). An object that is neither listed nor in the inventory is looked up
   with one GET before its first apply: if it exists (a policy tuning a cluster's own
   object) its entry is *adopted*. After a CRD is applied its group is re-discovered
   (polling briefly until the kind is served), so custom resources of the same cycle can
   be applied.
4. **Prune** the plan's entries in delete order: only objects that are in the inventory
   *and* were listed with the agent's label are deleted (404 counts as gone); an entry
   whose object is gone or no longer carries the label leaves the inventory untouched on
   the cluster. An adopted object is never deleted: it is *released* — its ownership labels
   removed with a merge patch (the fields the agent set stay), PRUNED "released (existed
   before the agent)". Audit mode: WOULD_PRUNE, and the inventory is kept as it is (an
   entry whose object is gone is WOULD_PRUNE "gone").
5. **Health**: ``health.assess`` of each desired object's live state (the apply answer, or
   the listed object).
6. The report carries ``inventory.merge(applied=..., pruned=...)``.

Per-object refusals (4xx: invalid, conflict, forbidden) become that object's FAILED result
and the cycle goes on. If the server becomes unreachable mid-cycle, the remaining writes are
not attempted and are reported FAILED. Messages are one line and never carry the token or
an object's values (drift is reported as field paths).

Discovery (kind → plural, namespaced) is cached per target, per group-version, and
refreshed when a kind is not found.

Does not: persist the inventory or the report (the shell does), schedule cycles, retry a
failed cycle, or watch.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from edge_agent.bundle.model import Mode
from edge_agent.errors import TargetUnavailableError, one_line
from edge_agent.reconcile.drift import detect
from edge_agent.reconcile.health import Health, assess
from edge_agent.reconcile.inventory import Inventory, InventoryEntry, manifest_digest
from edge_agent.reconcile.objects import (
    LAYER_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_SELECTOR,
    DesiredObject,
    ObjectRef,
    apply_order,
    delete_order,
    split_api_version,
)
from edge_agent.reconcile.target import Action, CycleReport, ObjectResult

log = logging.getLogger(__name__)

FIELD_MANAGER = "edge-agent"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
_CRD_GROUP = "apiextensions.k8s.io"

Obj = dict[str, Any]

_MERGE_PATCH = "application/merge-patch+json"
_RELEASE_PATCH: Obj = {"metadata": {"labels": {MANAGED_BY_LABEL: None, LAYER_LABEL: None}}}
_RELEASED = "released (existed before the agent)"


@dataclass(frozen=True, slots=True)
class KubeSettings:
    """Limits of one target."""

    connect_timeout_s: float = 5.0
    """Per request: time to open a connection. An API server that is booting refuses fast."""
    read_timeout_s: float = 30.0
    """Per request: time to wait for an answer. A LIST of a few thousand objects fits."""
    crd_wait_s: float = 10.0
    """After applying a CRD, how long to wait for its kind to be served (Established)."""
    crd_poll_s: float = 0.25
    """Interval between discovery polls while waiting for a CRD."""


@dataclass(frozen=True, slots=True)
class _Resource:
    plural: str
    namespaced: bool


class _ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason


class _Unreachable(Exception):
    """No answer: connection refused, timeout, broken connection."""


_Key = tuple[str, str, str, str]  # group, kind, namespace, name (namespace defaulted)


class KubeTarget:
    """Enforces desired objects onto one Kubernetes API server (see the module docstring)."""

    name = "kubernetes"

    def __init__(
        self,
        api_client: Any,
        *,
        settings: KubeSettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``api_client``: a ``kubernetes.client.ApiClient``; the target does not close it."""
        self._api = api_client
        self._settings = settings or KubeSettings()
        self._sleep = sleep
        self._monotonic = monotonic
        self._discovery: dict[tuple[str, str], dict[str, _Resource]] = {}
        host = getattr(getattr(api_client, "configuration", None), "host", "") or ""
        self.server_url: str = str(host)

    @classmethod
    def from_kubeconfig(
        cls, path: str, *, context: str | None = None, settings: KubeSettings | None = None
    ) -> KubeTarget:
        """A target for the cluster of a kubeconfig file (its current context by default)."""
        config: Any = importlib.import_module("kubernetes.config")
        try:
            api_client = config.new_client_from_config(
                config_file=path, context=context, persist_config=False
            )
        except Exception as exc:  # the loader raises many types; wrap at the seam
            raise TargetUnavailableError(
                f"kubeconfig {path}: cannot be loaded ({type(exc).__name__})"
            ) from exc
        return cls(api_client, settings=settings)

    @classmethod
    def from_in_cluster(cls, *, settings: KubeSettings | None = None) -> KubeTarget:
        """A target for the cluster this pod runs in (service account token and CA)."""
        client: Any = importlib.import_module("kubernetes.client")
        config: Any = importlib.import_module("kubernetes.config")
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except Exception as exc:
            raise TargetUnavailableError(
                f"in-cluster configuration unavailable ({type(exc).__name__})"
            ) from exc
        return cls(client.ApiClient(configuration), settings=settings)

    # -- the cycle ---------------------------------------------------------------------------

    def reconcile(
        self, desired: Sequence[DesiredObject], inventory: Inventory, *, mode: Mode
    ) -> CycleReport:
        resources = self._discover_kinds(desired, inventory)
        live = self._list_all(resources)
        plan = _Plan.of(desired, inventory, resources)
        cycle = _Cycle(self, mode, live, plan)
        for obj in apply_order(desired):
            cycle.apply(obj)
        for entry in plan.to_prune:
            cycle.prune(entry)
        report = CycleReport(
            results=tuple(cycle.results),
            inventory=inventory.merge(applied=cycle.applied, pruned=cycle.pruned),
        )
        log.info(
            "reconcile %s: %d objects, %d created, %d healed, %d drifted, %d pruned, %d failed",
            self.server_url,
            len(report.results),
            report.count(Action.CREATED),
            report.count(Action.HEALED),
            report.count(Action.DRIFTED),
            report.count(Action.PRUNED),
            report.count(Action.FAILED),
        )
        return report

    def _discover_kinds(
        self, desired: Sequence[DesiredObject], inventory: Inventory
    ) -> dict[tuple[str, str], tuple[str, _Resource | None]]:
        """(group, kind) → (api version, resource or None when not served) for every kind
        among the desired objects and the inventory. Raises TargetUnavailableError."""
        kinds: dict[tuple[str, str], str] = {}  # (group, kind) -> api version to list with
        for obj in desired:
            kinds.setdefault((obj.ref.group, obj.ref.kind), obj.api_version)
        for entry in inventory:
            kinds.setdefault((entry.ref.group, entry.ref.kind), entry.api_version)
        found: dict[tuple[str, str], tuple[str, _Resource | None]] = {}
        for (group, kind), api_version in kinds.items():
            try:
                found[(group, kind)] = (api_version, self._resolve(api_version, kind))
            except _Unreachable as exc:
                raise TargetUnavailableError(
                    f"Kubernetes API {self.server_url} unreachable: {exc}"
                ) from None
            except _ApiError as exc:
                raise TargetUnavailableError(
                    f"Kubernetes API {self.server_url}: discovery of {kind} failed: {exc}"
                ) from None
        return found

    def _list_all(
        self, resources: Mapping[tuple[str, str], tuple[str, _Resource | None]]
    ) -> dict[_Key, Obj]:
        """One LIST per kind; raises TargetUnavailableError when the cluster cannot be read."""
        live: dict[_Key, Obj] = {}
        for (group, kind), (api_version, resource) in resources.items():
            if resource is None:
                continue  # not served (yet): nothing of it exists
            try:
                listed = self._request(
                    "GET", _collection_path(api_version, resource.plural, None), _list_query()
                )
            except _Unreachable as exc:
                raise TargetUnavailableError(
                    f"Kubernetes API {self.server_url} unreachable: {exc}"
                ) from None
            except _ApiError as exc:
                if exc.status == 404:
                    self._forget(api_version)
                    continue
                raise TargetUnavailableError(
                    f"Kubernetes API {self.server_url}: listing {kind} failed: {exc}"
                ) from None
            for item in listed.get("items") or ():
                if not isinstance(item, dict):
                    continue
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                meta = item.get("metadata") or {}
                key = (group, kind, str(meta.get("namespace") or ""), str(meta.get("name")))
                live[key] = item
        return live

    # -- discovery ---------------------------------------------------------------------------

    def _resolve(self, api_version: str, kind: str, *, wait: bool = False) -> _Resource | None:
        """The resource serving ``kind`` in ``api_version``, or None when it is not served.

        Cached; an unknown kind re-fetches its group-version once, and with ``wait`` polls
        discovery until ``crd_wait_s`` has passed (a CRD applied in this cycle).
        """
        cached = self._discovery.get(_group_version(api_version))
        if cached is not None and kind in cached:
            return cached[kind]
        deadline = self._monotonic() + (self._settings.crd_wait_s if wait else 0.0)
        while True:
            found = self._discover(api_version).get(kind)
            if found is not None or self._monotonic() >= deadline:
                return found
            self._sleep(self._settings.crd_poll_s)

    def _discover(self, api_version: str) -> dict[str, _Resource]:
        group, version = _group_version(api_version)
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            answer = self._request("GET", path, [])
        except _ApiError as exc:
            if exc.status != 404:
                raise
            answer = {}
        resources: dict[str, _Resource] = {}
        for item in answer.get("resources") or ():
            if not isinstance(item, dict):
                continue
            name, kind = item.get("name"), item.get("kind")
            if not isinstance(name, str) or "/" in name or not isinstance(kind, str):
                continue
            resources.setdefault(kind, _Resource(name, bool(item.get("namespaced"))))
        self._discovery[(group, version)] = resources
        return resources

    def _forget(self, api_version: str) -> None:
        self._discovery.pop(_group_version(api_version), None)

    def forget_group(self, group: str) -> None:
        """Drop every cached group-version of ``group`` (after its CRDs changed)."""
        for key in [k for k in self._discovery if k[0] == group]:
            del self._discovery[key]

    # -- HTTP --------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: str | Obj | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One request through ``ApiClient.call_api``; the decoded JSON answer.

        ``body``: a dict for JSON content types (the client encodes it), text otherwise.
        """
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            request = self._api.param_serialize(
                method,
                path,
                query_params=query,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(
                *request,
                _request_timeout=(self._settings.connect_timeout_s, self._settings.read_timeout_s),
            )
            response.read()
            status = int(response.status)
            data = response.data
        except Exception as exc:  # urllib3 errors, OSError, timeouts: wrapped at the seam
            raise _Unreachable(_describe_failure(exc)) from None
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {}
        if not isinstance(decoded, dict):
            decoded = {}
        if not 200 <= status <= 299:
            raise _ApiError(
                status, str(decoded.get("reason") or "Error"), str(decoded.get("message") or "")
            )
        return decoded


@dataclass(frozen=True, slots=True)
class _Plan:
    """Desired objects and inventory entries keyed by resolved identity.

    The key's namespace is resolved through discovery: a namespaced kind with no namespace
    is ``default``, a cluster-scoped kind has none. So ``metadata.namespace: default`` added
    or dropped is the same object, never pruned; an inventory entry whose resolved key is
    desired (an *alias*: same object, other ref) leaves the inventory without a DELETE once
    the desired object is applied.
    """

    resources: Mapping[tuple[str, str], tuple[str, _Resource | None]]
    prior: Mapping[_Key, InventoryEntry]
    """Resolved key of a desired object → its inventory entry (its own ref first)."""
    aliases: Mapping[_Key, tuple[ObjectRef, ...]]
    """Resolved key of a desired object → other refs of the inventory naming it."""
    to_prune: tuple[InventoryEntry, ...]
    """Entries whose resolved key is not desired, in ``delete_order``."""

    @classmethod
    def of(
        cls,
        desired: Sequence[DesiredObject],
        inventory: Inventory,
        resources: Mapping[tuple[str, str], tuple[str, _Resource | None]],
    ) -> _Plan:
        def key(ref: ObjectRef) -> _Key:
            resource = resources.get((ref.group, ref.kind), ("", None))[1]
            return _resolved_key(ref, resource)

        wanted = {key(obj.ref): obj.ref for obj in desired}
        prior: dict[_Key, InventoryEntry] = {}
        aliases: dict[_Key, list[ObjectRef]] = {}
        stale: dict[ObjectRef, InventoryEntry] = {}
        for entry in inventory:
            k = key(entry.ref)
            if k not in wanted:
                stale[entry.ref] = entry
                continue
            if entry.ref != wanted[k]:
                aliases.setdefault(k, []).append(entry.ref)
            held = prior.get(k)
            if held is None or entry.ref == wanted[k]:
                adopted = entry.adopted or (held is not None and held.adopted)
                prior[k] = InventoryEntry(entry.ref, entry.api_version, entry.digest, adopted)
            elif entry.adopted and not held.adopted:
                prior[k] = InventoryEntry(held.ref, held.api_version, held.digest, True)
        return cls(
            resources=resources,
            prior=prior,
            aliases={k: tuple(refs) for k, refs in aliases.items()},
            to_prune=tuple(stale[ref] for ref in delete_order(stale)),
        )


class _Cycle:
    """The mutable bookkeeping of one reconcile cycle."""

    def __init__(self, target: KubeTarget, mode: Mode, live: dict[_Key, Obj], plan: _Plan) -> None:
        self.target = target
        self.mode = mode
        self.live = live
        self.plan = plan
        self.results: list[ObjectResult] = []
        self.applied: list[InventoryEntry] = []
        self.pruned: list[ObjectRef] = []
        self.unreachable: str | None = None
        self.crd_kinds: set[tuple[str, str]] = set()  # (group, kind) defined by applied CRDs

    def apply(self, obj: DesiredObject) -> None:
        ref = obj.ref
        kind = ref.kind
        planned = self.plan.resources.get((ref.group, kind), ("", None))[1]
        prior = self.plan.prior.get(_resolved_key(ref, planned))
        aliases = self.plan.aliases.get(_resolved_key(ref, planned), ())
        try:
            resource = self.target._resolve(
                obj.api_version, kind, wait=(ref.group, kind) in self.crd_kinds
            )
        except _Unreachable as exc:
            self.unreachable = str(exc)
            resource = None
        except _ApiError as exc:
            self._fail(ref, f"discovery failed: {exc}")
            return
        key = _resolved_key(ref, resource)
        namespace = key[2]
        live = self.live.get(key)
        digest = manifest_digest(obj.manifest)
        adopted = prior is not None and prior.adopted
        entry = InventoryEntry(ref, obj.api_version, digest, adopted)
        drift = detect(obj.manifest, live)
        # Unknown (no entry, or an entry without a digest) counts as changed: applied once.
        policy_changed = prior is None or prior.digest != digest
        if not drift.drifted and not policy_changed:
            assert live is not None
            self._keep(entry, aliases)
            self._result(ref, Action.UNCHANGED, "", live)
            return
        if self.mode is Mode.AUDIT:
            # Nothing changes in audit mode, the inventory included.
            if drift.drifted:
                self._result(ref, Action.DRIFTED, drift.describe(), live)
            elif prior is not None and prior.digest:
                self._result(ref, Action.DRIFTED, "policy changed", live)
            else:
                self._result(ref, Action.UNCHANGED, "", live)
            return
        if self.unreachable is not None:
            self._fail(ref, f"not attempted: {self.unreachable}", live)
            return
        if resource is None:
            self._fail(ref, f"{obj.api_version} {kind} is not served by the API server", live)
            return
        path = _object_path(obj.api_version, resource, namespace, ref.name)
        if live is None and prior is None:
            # Not among the agent's labelled objects and never applied: does it exist already
            # (a policy tuning a cluster's own object)? Then it is adopted, never deleted.
            try:
                existing: Obj | None = self.target._request("GET", path, [])
            except _Unreachable as exc:
                self.unreachable = str(exc)
                self._fail(ref, f"lookup failed: {exc}")
                return
            except _ApiError as exc:
                if exc.status != 404:
                    self._fail(ref, f"lookup refused: {exc}")
                    return
                existing = None
            if existing is not None:
                adopted = True
                entry = InventoryEntry(ref, obj.api_version, digest, adopted)
                drift = detect(obj.manifest, existing)
        body = dict(obj.manifest)
        if resource.namespaced:
            body["metadata"] = {**dict(body.get("metadata") or {}), "namespace": namespace}
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        try:
            answer = self.target._request(
                "PATCH", path, query, json.dumps(body), APPLY_CONTENT_TYPE
            )
        except _Unreachable as exc:
            self.unreachable = str(exc)
            self._fail(ref, f"apply failed: {exc}", live)
            return
        except _ApiError as exc:
            self._fail(ref, f"apply refused: {exc}", live)
            return
        answer.setdefault("apiVersion", obj.api_version)
        answer.setdefault("kind", kind)
        self._keep(entry, aliases)
        if live is None and not adopted:
            action, detail = Action.CREATED, "missing"
        elif live is None and prior is None:
            action, detail = (
                Action.HEALED,
                f"adopted (existed before the agent): {drift.describe()}",
            )
        elif drift.drifted:
            action, detail = Action.HEALED, drift.describe()
        else:
            action, detail = Action.HEALED, "policy changed"
        self._result(ref, action, detail, answer)
        if kind == "CustomResourceDefinition" and ref.group == _CRD_GROUP:
            self._crd_applied(obj.manifest)

    def _keep(self, entry: InventoryEntry, aliases: Sequence[ObjectRef]) -> None:
        """Record ``entry`` in the inventory; other refs of the same object leave it."""
        self.applied.append(entry)
        self.pruned.extend(aliases)

    def _crd_applied(self, manifest: Mapping[str, Any]) -> None:
        spec = manifest.get("spec") or {}
        group = spec.get("group")
        kind = (spec.get("names") or {}).get("kind")
        if isinstance(group, str) and isinstance(kind, str):
            self.crd_kinds.add((group, kind))
            self.target.forget_group(group)

    def prune(self, entry: InventoryEntry) -> None:
        ref = entry.ref
        try:
            resource = self.target._resolve(entry.api_version, ref.kind)
        except (_Unreachable, _ApiError) as exc:
            self._fail(ref, f"discovery failed: {exc}", None, health=False)
            return
        key = _resolved_key(ref, resource)
        live = self.live.get(key)
        if live is None or resource is None:
            # Gone, or no longer labelled as the agent's: leave the cluster alone.
            if self.mode is Mode.AUDIT:
                self.results.append(ObjectResult(ref, Action.WOULD_PRUNE, "gone"))
                return
            self.pruned.append(ref)
            detail = _RELEASED if entry.adopted else "already gone"
            self.results.append(ObjectResult(ref, Action.PRUNED, detail))
            return
        if self.mode is Mode.AUDIT:
            detail = f"would be {_RELEASED}" if entry.adopted else "no longer desired"
            self.results.append(ObjectResult(ref, Action.WOULD_PRUNE, detail))
            return
        if self.unreachable is not None:
            self._fail(ref, f"not attempted: {self.unreachable}", None, health=False)
            return
        path = _object_path(entry.api_version, resource, key[2], ref.name)
        if entry.adopted:
            # Never delete what existed before the agent: drop its ownership labels so that
            # it is no longer listed as the agent's. The fields the agent set stay as they are.
            method, body, content_type = "PATCH", _RELEASE_PATCH, _MERGE_PATCH
        else:
            method, content_type = "DELETE", "application/json"
            body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        verb = "release" if entry.adopted else "delete"
        try:
            self.target._request(method, path, [], body, content_type)
        except _Unreachable as exc:
            self.unreachable = str(exc)
            self._fail(ref, f"{verb} failed: {exc}", None, health=False)
            return
        except _ApiError as exc:
            if exc.status != 404:
                self._fail(ref, f"{verb} refused: {exc}", None, health=False)
                return
        self.pruned.append(ref)
        self.results.append(
            ObjectResult(ref, Action.PRUNED, _RELEASED if entry.adopted else "deleted")
        )

    def _result(self, ref: ObjectRef, action: Action, detail: str, live: Obj | None) -> None:
        health: Health | None = assess(live) if live is not None else None
        self.results.append(ObjectResult(ref, action, one_line(detail), health))

    def _fail(
        self, ref: ObjectRef, detail: str, live: Obj | None = None, *, health: bool = True
    ) -> None:
        verdict = assess(live) if health and live is not None else None
        self.results.append(ObjectResult(ref, Action.FAILED, one_line(detail), verdict))


def _resolved_key(ref: ObjectRef, resource: _Resource | None) -> _Key:
    """``ref``'s identity on the server: a namespaced kind without namespace is in
    ``default``, a cluster-scoped kind has no namespace; unknown kinds keep theirs."""
    if resource is None:
        namespace = ref.namespace
    elif resource.namespaced:
        namespace = ref.namespace or "default"
    else:
        namespace = ""
    return (ref.group, ref.kind, namespace, ref.name)


def _list_query() -> list[tuple[str, str]]:
    return [("labelSelector", MANAGED_SELECTOR)]


def _group_version(api_version: str) -> tuple[str, str]:
    return split_api_version(api_version)


def _prefix(api_version: str) -> str:
    group, version = split_api_version(api_version)
    return f"/apis/{group}/{version}" if group else f"/api/{version}"


def _collection_path(api_version: str, plural: str, namespace: str | None) -> str:
    where = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    return f"{_prefix(api_version)}{where}/{plural}"


def _object_path(api_version: str, resource: _Resource, namespace: str, name: str) -> str:
    base = _collection_path(
        api_version, resource.plural, namespace if resource.namespaced else None
    )
    return f"{base}/{quote(name, safe='')}"


def _describe_failure(exc: BaseException) -> str:
    """A short, secret-free description of a transport failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    names: list[str] = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names.append(type(current).__name__)
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else current.__cause__
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "timed out" in text or "timeout" in text or any("Timeout" in n for n in names):
        return "timed out"
    return names[-1] if names else "no answer"
