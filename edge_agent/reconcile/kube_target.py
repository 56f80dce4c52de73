"""The Kubernetes API target: enforce desired objects onto a cluster with server-side apply.

One concept: one reconcile cycle against one API server, through the official ``kubernetes``
client's ``ApiClient.call_api`` with plain dicts (never the typed API classes: they are slow
to import and reject fields newer than the client). ``kubernetes`` is imported lazily, only
by the constructors, so importing this module costs nothing in processes that do not enforce.

A cycle is a pipeline:

1. **List**: for every kind among the desired objects and the entries to prune, one LIST
   with ``labelSelector=MANAGED_SELECTOR`` (across namespaces for namespaced kinds); never a
   GET per object. List items get ``apiVersion``/``kind`` filled in (a real server omits
   them). Any failure here (refused, timeout, 5xx, 401/403) raises ``TargetUnavailableError``
   before anything is written; a kind that is not served (its CRD not applied yet) lists as
   empty.
2. **Apply** in ``apply_order``: ``drift.detect(manifest, live)``; nothing is written when
   nothing drifted (UNCHANGED). Otherwise, in enforce mode, a server-side apply (field
   manager ``edge-agent``, ``force=true``) → CREATED or HEALED; in audit mode DRIFTED.
   After a CRD is applied its group is re-discovered (polling briefly until the kind is
   served), so custom resources of the same cycle can be applied.
3. **Prune** ``inventory.diff(desired).to_prune`` in delete order: only objects that are in
   the inventory *and* were listed with the agent's label are deleted (404 counts as gone);
   an entry whose object is gone or no longer carries the label leaves the inventory
   untouched on the cluster. Audit mode: WOULD_PRUNE.
4. **Health**: ``health.assess`` of each desired object's live state (the apply answer, or
   the listed object).
5. The report carries ``inventory.merge(applied=..., pruned=...)``.

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
from edge_agent.reconcile.inventory import Inventory, InventoryEntry
from edge_agent.reconcile.objects import (
    MANAGED_SELECTOR,
    DesiredObject,
    ObjectRef,
    apply_order,
    split_api_version,
)
from edge_agent.reconcile.target import Action, CycleReport, ObjectResult

log = logging.getLogger(__name__)

FIELD_MANAGER = "edge-agent"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
_CRD_GROUP = "apiextensions.k8s.io"

Obj = dict[str, Any]


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
        diff = inventory.diff(desired)
        live = self._list_all(desired, diff.to_prune)
        cycle = _Cycle(self, mode, live)
        for obj in apply_order(desired):
            cycle.apply(obj)
        for entry in diff.to_prune:
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

    def _list_all(
        self, desired: Sequence[DesiredObject], to_prune: Sequence[InventoryEntry]
    ) -> dict[_Key, Obj]:
        """One LIST per kind; raises TargetUnavailableError when the cluster cannot be read."""
        kinds: dict[tuple[str, str], str] = {}  # (group, kind) -> api version to list with
        for obj in desired:
            kinds.setdefault((obj.ref.group, obj.ref.kind), obj.api_version)
        for entry in to_prune:
            kinds.setdefault((entry.ref.group, entry.ref.kind), entry.api_version)
        live: dict[_Key, Obj] = {}
        for (group, kind), api_version in kinds.items():
            try:
                resource = self._resolve(api_version, kind)
                if resource is None:
                    continue  # not served (yet): nothing of it exists
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
        body: str | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One request through ``ApiClient.call_api``; the decoded JSON answer."""
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


class _Cycle:
    """The mutable bookkeeping of one reconcile cycle."""

    def __init__(self, target: KubeTarget, mode: Mode, live: dict[_Key, Obj]) -> None:
        self.target = target
        self.mode = mode
        self.live = live
        self.results: list[ObjectResult] = []
        self.applied: list[DesiredObject] = []
        self.pruned: list[ObjectRef] = []
        self.unreachable: str | None = None
        self.crd_kinds: set[tuple[str, str]] = set()  # (group, kind) defined by applied CRDs

    def apply(self, obj: DesiredObject) -> None:
        ref = obj.ref
        kind = ref.kind
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
        namespace = ref.namespace or ("default" if resource and resource.namespaced else "")
        live = self.live.get((ref.group, kind, namespace, ref.name))
        drift = detect(obj.manifest, live)
        if not drift.drifted:
            assert live is not None
            self.applied.append(obj)
            self._result(ref, Action.UNCHANGED, "", live)
            return
        if self.mode is Mode.AUDIT:
            self._result(ref, Action.DRIFTED, drift.describe(), live)
            return
        if self.unreachable is not None:
            self._fail(ref, f"not attempted: {self.unreachable}", live)
            return
        if resource is None:
            self._fail(ref, f"{obj.api_version} {kind} is not served by the API server", live)
            return
        body = dict(obj.manifest)
        if resource.namespaced:
            body["metadata"] = {**dict(body.get("metadata") or {}), "namespace": namespace}
        path = _object_path(obj.api_version, resource, namespace, ref.name)
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
        self.applied.append(obj)
        action = Action.CREATED if live is None else Action.HEALED
        self._result(ref, action, "missing" if live is None else drift.describe(), answer)
        if kind == "CustomResourceDefinition" and ref.group == _CRD_GROUP:
            self._crd_applied(obj.manifest)

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
        namespace = ref.namespace or ("default" if resource and resource.namespaced else "")
        live = self.live.get((ref.group, ref.kind, namespace, ref.name))
        if live is None or resource is None:
            # Gone, or no longer labelled as the agent's: leave the cluster alone.
            self.pruned.append(ref)
            self.results.append(ObjectResult(ref, Action.PRUNED, "already gone"))
            return
        if self.mode is Mode.AUDIT:
            self.results.append(ObjectResult(ref, Action.WOULD_PRUNE, "no longer desired"))
            return
        if self.unreachable is not None:
            self._fail(ref, f"not attempted: {self.unreachable}", None, health=False)
            return
        path = _object_path(entry.api_version, resource, namespace, ref.name)
        body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1"})
        try:
            self.target._request("DELETE", path, [], body)
        except _Unreachable as exc:
            self.unreachable = str(exc)
            self._fail(ref, f"delete failed: {exc}", None, health=False)
            return
        except _ApiError as exc:
            if exc.status != 404:
                self._fail(ref, f"delete refused: {exc}", None, health=False)
                return
        self.pruned.append(ref)
        self.results.append(ObjectResult(ref, Action.PRUNED, "deleted"))

    def _result(self, ref: ObjectRef, action: Action, detail: str, live: Obj | None) -> None:
        health: Health | None = assess(live) if live is not None else None
        self.results.append(ObjectResult(ref, action, one_line(detail), health))

    def _fail(
        self, ref: ObjectRef, detail: str, live: Obj | None = None, *, health: bool = True
    ) -> None:
        verdict = assess(live) if health and live is not None else None
        self.results.append(ObjectResult(ref, Action.FAILED, one_line(detail), verdict))


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
