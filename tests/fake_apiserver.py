"""A fake Kubernetes API server for the tests: real HTTP on 127.0.0.1, state in memory.

The agent talks to Kubernetes only through the official ``kubernetes`` client (``DynamicClient`` and
``ApiClient.call_api``). This module answers that client the way a real API server would, for
everything the agent relies on, so tests exercise the real client, the real wire format and the real
error paths instead of patched functions. It is written on the standard library (``http.server``,
``json``) plus PyYAML; it does not import ``kubernetes`` except in :meth:`FakeApiServer.configuration`.

Why not ``kmock``: kmock 0.8 needed more than ten behaviours replaced (SSA, create status codes,
object metadata, the four PATCH types, discovery, list kinds, selectors, dry-run, PUT) plus an
async runtime and ``pytest-asyncio``; the HTTP part is the easy bit, the semantics are the work,
and written here they stay synchronous, dependency-free and readable in one file.

What it models
--------------
- Discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``,
  ``/apis/<group>/<version>`` (``APIResourceList`` with name, singularName, namespaced, kind, verbs,
  shortNames, and ``<plural>/status`` entries). The served set is configurable (``resources=``);
  the default is :data:`BUILTIN_RESOURCES`.
- CustomResourceDefinitions: a created CRD is accepted and established at once (status conditions
  ``NamesAccepted`` and ``Established`` True, ``acceptedNames``, ``storedVersions``) unless
  ``establish_crds=False`` (then call :meth:`FakeApiServer.establish`); every served version is then
  in discovery and has CRUD; ``subresources.status`` gives a ``/status`` endpoint. Deleting the CRD
  deletes its custom resources and stops serving them. Objects are stored once per group/plural;
  reading through another version only rewrites ``apiVersion`` (no conversion).
- CRUD: GET, LIST (namespaced and across namespaces) with ``labelSelector`` (``=``, ``==``, ``!=``,
  ``in``, ``notin``, ``key``, ``!key``) and ``fieldSelector`` (``metadata.name``,
  ``metadata.namespace``, ``=``/``!=``); a list has ``kind: <Kind>List``, ``apiVersion`` and
  ``metadata.resourceVersion``. Like a real server, items of built-in lists carry no
  ``apiVersion``/``kind``; items of custom resource lists do. POST (201; 409 AlreadyExists;
  ``generateName``), PUT (200; 409 Conflict on a stale ``metadata.resourceVersion``; 404 when
  missing), DELETE of one object and of a collection (by selector), 404 NotFound for a namespaced
  object in a missing namespace. Every error is a ``Status`` body (kind, status Failure, message,
  reason, details, code) so ``ApiException`` parses it.
- PATCH: ``application/merge-patch+json`` (RFC 7386), ``application/json-patch+json`` (RFC 6902:
  add, remove, replace, move, copy, test), ``application/strategic-merge-patch+json``
  (approximated: merge patch, except that lists with a known merge key -- see
  :data:`MAP_LIST_KEYS` -- merge item by item and honour ``$patch: delete``; other ``$``
  directives are dropped), and server-side apply ``application/apply-patch+yaml`` (below).
  A ``metadata.resourceVersion`` in a patch is a precondition (409 when stale).
- Server-side apply: ``fieldManager`` required (422 otherwise), ``force``; creates a missing object
  (201); ownership is tracked per (manager, operation, subresource) and shown in
  ``metadata.managedFields`` in the real ``FieldsV1`` format (``f:``, ``k:{...}``, ``v:...``,
  ``.``). Apply conflicts (409, reason Conflict, ``FieldManagerConflict`` causes) when another
  manager owns a field whose live value differs from the applied one; ``force=true`` takes the
  field over. Fields an applier owned and no longer sends are removed unless another manager owns
  them. Non-apply writes are ``Update`` operations: the writer gains the fields it changed and the
  other managers lose them (fields a manager changes, including defaults, as a real server does).
  The list types used for this are a fixed table (:data:`MAP_LIST_KEYS`, :data:`SET_LISTS`);
  every other list is atomic. Managers for non-apply writes default to the User-Agent's product
  (``OpenAPI-Generator`` for the Python client), as a real server does.
- ``dryRun=All`` on POST, PUT, PATCH (including apply) and DELETE: everything is computed and
  validated, the answer is what would be stored, nothing is stored and ``resourceVersion`` does
  not move.
- Metadata: ``uid``, ``resourceVersion`` (one global counter, as a string), ``creationTimestamp``,
  ``generation`` for kinds that have one (apps/*, Job, NetworkPolicy, CRD, custom resources),
  bumped only when something outside ``metadata`` and ``status`` changes. A write that changes
  nothing is not stored: ``resourceVersion`` and ``managedFields`` stay (as a real server does).
- Status subresource: ``/status`` GET, PUT, PATCH change only ``status`` (no generation bump);
  writes to the main resource ignore ``status`` for kinds with the subresource.
- Defaults (see :func:`_apply_defaults`): Deployment replicas 1, strategy RollingUpdate 25%/25%,
  revisionHistoryLimit 10, progressDeadlineSeconds 600; StatefulSet replicas 1,
  podManagementPolicy OrderedReady, updateStrategy RollingUpdate partition 0,
  revisionHistoryLimit 10, persistentVolumeClaimRetentionPolicy Retain/Retain; DaemonSet
  updateStrategy RollingUpdate maxUnavailable 1 maxSurge 0, revisionHistoryLimit 10; Job
  backoffLimit 6, completions 1, parallelism 1, completionMode NonIndexed, suspend false,
  manualSelector unset, a generated ``spec.selector`` and template labels
  (``batch.kubernetes.io/controller-uid``, ``batch.kubernetes.io/job-name``, ``controller-uid``,
  ``job-name``); pod templates and Pods: restartPolicy Always, dnsPolicy ClusterFirst,
  schedulerName default-scheduler, terminationGracePeriodSeconds 30, securityContext {},
  containers' imagePullPolicy (Always for ``:latest`` or no tag, else IfNotPresent),
  terminationMessagePath /dev/termination-log, terminationMessagePolicy File, resources {},
  ports' protocol TCP; Pods also enableServiceLinks true, priority 0, preemptionPolicy
  PreemptLowerPriority, serviceAccountName/serviceAccount default and status.phase Pending;
  Service type ClusterIP, sessionAffinity None, ports' protocol TCP and targetPort = port, a
  clusterIP from 10.96.0.0/16 (kept across updates), clusterIPs, ipFamilies [IPv4],
  ipFamilyPolicy SingleStack, internalTrafficPolicy Cluster, a nodePort (30000+) and
  externalTrafficPolicy Cluster for NodePort/LoadBalancer, status.loadBalancer {}; Namespace
  spec.finalizers [kubernetes], status.phase Active, label ``kubernetes.io/metadata.name``;
  Secret type Opaque and ``stringData`` folded into base64 ``data``; PVC volumeMode Filesystem,
  status.phase Pending; NetworkPolicy policyTypes; RBAC subjects' apiGroup; CRD
  spec.conversion.strategy None. Kinds with a status subresource start with ``status: {}``.
- Validation (422 Invalid): names (DNS subdomain; DNS label for namespaces and services),
  apps/* need a selector matching the template labels and containers with name and image, Job
  restartPolicy OnFailure/Never, immutable selectors (apps/*, Job) and Job template, Service
  ports, CRD name ``<plural>.<group>`` and scope. 400 BadRequest for a body whose kind,
  apiVersion, name or namespace contradicts the URL.
- Test controls (Python, not HTTP): :meth:`~FakeApiServer.set_status`,
  :meth:`~FakeApiServer.objects`, :meth:`~FakeApiServer.get_object`,
  :attr:`~FakeApiServer.request_log`, :meth:`~FakeApiServer.fail_next` (answer N requests with
  503 or any status), :meth:`~FakeApiServer.down` / :meth:`~FakeApiServer.up` (listener closed:
  connection refused, same port afterwards), :meth:`~FakeApiServer.set_latency` (slow answers),
  :meth:`~FakeApiServer.write_kubeconfig`, optional bearer-token auth (401 otherwise).

What it does NOT model
----------------------
watch (answers 405), ``limit``/``continue`` paging (the whole list is returned, which a real
server may also do), finalizers and graceful deletion (DELETE removes at once; a Namespace is
removed synchronously with its contents, no ``Terminating`` phase is observable), owner references
and garbage collection, controllers (no Pods for a Deployment, no status changes unless a test
sets them), admission (quota, LimitRange, default StorageClass, service-account tokens),
OpenAPI (``/openapi/v2``, ``/openapi/v3``), schema validation and pruning of custom resources,
CRD conversion, version conversion of built-ins, aggregated discovery, field validation
(``fieldValidation``), protobuf, ``managedFields`` sent by clients (ignored, so resetting
ownership with ``managedFields: [{}]`` is not possible), SSA of ``null`` values (dropped), SSA
list-type information from CRD schemas (custom resources' lists are atomic), ``$retainKeys``,
``$setElementOrder`` and ``$deleteFromPrimitiveList`` in strategic merge patches, TLS, RBAC
authorization, ``selfLink``, ``deleteOptions.preconditions``, ``resourceVersion`` semantics on
GET/LIST (always the latest).

Invariants: state is changed only under ``self._lock``; objects leave the fake as deep copies;
``resourceVersion`` strictly increases across all stored writes.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import json
import re
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
FieldPath = tuple[str, ...]  # FieldsV1 tokens from the root: ("f:spec", "f:replicas")


# --------------------------------------------------------------------------------------------
# Resource types


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One served resource: what discovery lists and what the URL router resolves."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    has_status: bool = False
    has_generation: bool = False
    short_names: tuple[str, ...] = ()
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def verbs(self) -> list[str]:
        return [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]


def _rt(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool = True,
    *,
    status: bool = False,
    generation: bool = False,
    short: tuple[str, ...] = (),
) -> ResourceType:
    return ResourceType(
        group, version, plural, kind.lower(), kind, namespaced, status, generation, short
    )


BUILTIN_RESOURCES: tuple[ResourceType, ...] = (
    _rt("", "v1", "namespaces", "Namespace", False, status=True, short=("ns",)),
    _rt("", "v1", "configmaps", "ConfigMap", short=("cm",)),
    _rt("", "v1", "secrets", "Secret"),
    _rt("", "v1", "services", "Service", status=True, short=("svc",)),
    _rt("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
    _rt("", "v1", "pods", "Pod", status=True, short=("po",)),
    _rt("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", status=True, short=("pvc",)),
    _rt("", "v1", "resourcequotas", "ResourceQuota", status=True, short=("quota",)),
    _rt("apps", "v1", "deployments", "Deployment", status=True, generation=True, short=("deploy",)),
    _rt("apps", "v1", "statefulsets", "StatefulSet", status=True, generation=True, short=("sts",)),
    _rt("apps", "v1", "daemonsets", "DaemonSet", status=True, generation=True, short=("ds",)),
    _rt("batch", "v1", "jobs", "Job", status=True, generation=True),
    _rt(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        generation=True,
        short=("netpol",),
    ),
    _rt("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _rt("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _rt("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _rt("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _rt(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        status=True,
        generation=True,
        short=("crd", "crds"),
    ),
)

#: Associative lists ("x-kubernetes-list-type: map") by field name, with their keys. Used for
#: server-side apply ownership and merging and as strategic-merge-patch merge keys (first key).
#: ``ports`` is special-cased: container ports key on (containerPort, protocol), service ports on
#: (port, protocol). Every list not listed here or in SET_LISTS is atomic.
MAP_LIST_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "hostAliases": ("ip",),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "versions": ("name",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
}
#: Lists of scalars with set semantics ("x-kubernetes-list-type: set"), as field-name paths.
SET_LISTS: frozenset[tuple[str, ...]] = frozenset({("metadata", "finalizers")})

_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MISSING = object()


# --------------------------------------------------------------------------------------------
# Errors answered as Status bodies


class ApiError(Exception):
    """An error answered to the client as a ``Status`` body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Obj | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def body(self) -> Obj:
        status: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def _gr(rt: ResourceType) -> str:
    return f"{rt.plural}.{rt.group}" if rt.group else rt.plural


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_gr(rt)} "{name}" not found',
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


def _invalid(rt: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    text = "; ".join(f"{fld}: {msg}" for fld, msg in causes)
    return ApiError(
        422,
        "Invalid",
        f'{rt.kind}.{rt.group or "core"} "{name}" is invalid: {text}',
        {
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": msg, "field": fld} for fld, msg in causes
            ],
        },
    )


def _conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_gr(rt)} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


# --------------------------------------------------------------------------------------------
# Label and field selectors


def _split_selector(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current.strip())
    return terms


_SET_TERM = re.compile(r"^([A-Za-z0-9./_-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_TERM = re.compile(r"^([A-Za-z0-9./_-]+)\s*(==|!=|=)\s*([A-Za-z0-9._-]*)$")
_EXISTS_TERM = re.compile(r"^(!?)\s*([A-Za-z0-9./_-]+)$")


def _requirement(key: str, op: str, values: frozenset[str]) -> Callable[[Mapping[str, str]], bool]:
    """One selector requirement; ``in``/``notin``/``!=`` match a missing label as Kubernetes does."""

    def check(labels: Mapping[str, str]) -> bool:
        if op == "exists":
            return key in labels
        if op == "!exists":
            return key not in labels
        found = labels.get(key) in values
        return found if op == "in" else not found

    return check


def parse_label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """Return a predicate over labels for a Kubernetes label selector string (400 if invalid)."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split_selector(text):
        if m := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            checks.append(_requirement(m.group(1), m.group(2), values))
        elif m := _EQ_TERM.match(term):
            key, op, value = m.groups()
            checks.append(_requirement(key, "notin" if op == "!=" else "in", frozenset({value})))
        elif m := _EXISTS_TERM.match(term):
            neg, key = m.groups()
            checks.append(_requirement(key, "!exists" if neg else "exists", frozenset()))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return lambda labels: all(check(labels) for check in checks)


def _parse_field_selector(text: str) -> Callable[[Obj], bool]:
    checks: list[Callable[[Obj], bool]] = []
    for term in _split_selector(text):
        m = re.match(r"^(metadata\.name|metadata\.namespace)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            raise ApiError(400, "BadRequest", f'field label not supported: "{term}"')
        path, op, value = m.groups()
        key = path.split(".")[1]

        def check(obj: Obj, key: str = key, op: str = op, value: str = value) -> bool:
            actual = str(obj["metadata"].get(key, ""))
            return actual != value if op == "!=" else actual == value

        checks.append(check)
    return lambda obj: all(check(obj) for check in checks)


# --------------------------------------------------------------------------------------------
# Patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _map_list_keys(names: tuple[str, ...]) -> tuple[str, ...] | None:
    if not names:
        return None
    last = names[-1]
    if last == "ports":
        if any(n in ("containers", "initContainers", "ephemeralContainers") for n in names):
            return ("containerPort", "protocol")
        return ("port", "protocol") if names[:1] == ("spec",) else None
    return MAP_LIST_KEYS.get(last)


def _is_keyed(items: list[Any], keys: tuple[str, ...]) -> bool:
    return all(isinstance(i, dict) and keys[0] in i for i in items)


def strategic_merge_patch(target: Any, patch: Any, names: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch, approximated: a merge patch whose known map-lists merge by key."""
    if isinstance(patch, list):
        keys = _map_list_keys(names)
        if not keys or not isinstance(target, list) or not _is_keyed(patch, keys[:1]):
            return [_strip_directives(i) for i in patch]
        key = keys[0]
        result = copy.deepcopy(target)
        for item in patch:
            index = next((n for n, t in enumerate(result) if t.get(key) == item[key]), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    del result[index]
            elif index is None:
                result.append(_strip_directives(item))
            else:
                result[index] = strategic_merge_patch(result[index], item, names)
        return result
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    merged: Obj = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = strategic_merge_patch(merged.get(key), value, (*names, key))
    return merged


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; a failed operation is a 422."""
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "json patch body must be a list of operations")
    doc = copy.deepcopy(doc)

    def parent(parts: list[str]) -> tuple[Any, str]:
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(parts: list[str]) -> Any:
        node = doc
        for part in parts:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def add(parts: list[str], value: Any) -> None:
        nonlocal doc
        if not parts:
            doc = value
            return
        node, last = parent(parts)
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        else:
            node[last] = value

    def remove(parts: list[str]) -> Any:
        node, last = parent(parts)
        return node.pop(int(last)) if isinstance(node, list) else node.pop(last)

    for op in operations:
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if kind == "add":
                add(parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(parts)
            elif kind == "replace":
                get(parts)  # must exist
                remove(parts)
                add(parts, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(parts, remove(_pointer(op["from"])))
            elif kind == "copy":
                add(parts, copy.deepcopy(get(_pointer(op["from"]))))
            elif kind == "test":
                if get(parts) != op["value"]:
                    raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
            else:
                raise ApiError(400, "BadRequest", f"unknown json patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(
                422, "Invalid", f"json patch {op.get('op')} {op.get('path')}: {exc!r}"
            ) from exc
    return doc


# --------------------------------------------------------------------------------------------
# Field ownership (server-side apply), in FieldsV1 tokens


def _key_token(item: Obj, keys: tuple[str, ...]) -> str:
    values = {k: item.get(k, "TCP" if k == "protocol" else None) for k in keys}
    return "k:" + json.dumps(
        {k: v for k, v in sorted(values.items()) if v is not None}, separators=(",", ":")
    )


def _list_kind(names: tuple[str, ...], items: list[Any]) -> tuple[str, tuple[str, ...]]:
    if names in SET_LISTS:
        return "set", ()
    keys = _map_list_keys(names)
    if keys and _is_keyed(items, keys[:1]):
        return "map", keys
    return "atomic", ()


def field_paths(value: Any, prefix: FieldPath = (), names: tuple[str, ...] = ()) -> set[FieldPath]:
    """The set of fields ``value`` sets, as a real server would record them in ``fieldsV1``."""
    out: set[FieldPath] = set()
    if isinstance(value, dict) and value:
        for key, child in value.items():
            if child is not None:
                out |= field_paths(child, (*prefix, f"f:{key}"), (*names, key))
        return out
    if isinstance(value, list) and value:
        kind, keys = _list_kind(names, value)
        if kind == "map":
            for item in value:
                token = (*prefix, _key_token(item, keys))
                out.add(token)
                out |= field_paths(item, token, names)
            return out
        if kind == "set":
            return {(*prefix, "v:" + json.dumps(item)) for item in value}
    if prefix:
        out.add(prefix)
    return out


def _value_at(obj: Any, path: FieldPath) -> Any:
    node = obj
    for token in path:
        kind, rest = token[:2], token[2:]
        if kind == "f:":
            if not isinstance(node, dict) or rest not in node:
                return _MISSING
            node = node[rest]
        elif kind == "k:":
            wanted = json.loads(rest)
            if not isinstance(node, list):
                return _MISSING
            node = next(
                (
                    i
                    for i in node
                    if isinstance(i, dict)
                    and all(
                        i.get(k, "TCP" if k == "protocol" else None) == v for k, v in wanted.items()
                    )
                ),
                _MISSING,
            )
            if node is _MISSING:
                return _MISSING
        else:  # "v:"
            wanted = json.loads(rest)
            return wanted if isinstance(node, list) and wanted in node else _MISSING
    return node


def _remove_at(obj: Any, path: FieldPath) -> None:
    parent = _value_at(obj, path[:-1])
    token = path[-1]
    kind, rest = token[:2], token[2:]
    if kind == "f:" and isinstance(parent, dict):
        parent.pop(rest, None)
    elif kind == "k:" and isinstance(parent, list):
        item = _value_at(obj, path)
        if item is not _MISSING:
            parent.remove(item)
    elif kind == "v:" and isinstance(parent, list):
        value = json.loads(rest)
        if value in parent:
            parent.remove(value)


def _is_leaf(path: FieldPath) -> bool:
    return not path[-1].startswith("k:")


def apply_merge(live: Any, applied: Any, names: tuple[str, ...] = ()) -> Any:
    """Merge an applied configuration into a live object with SSA list semantics."""
    if isinstance(live, dict) and isinstance(applied, dict):
        result = copy.deepcopy(live)
        for key, value in applied.items():
            result[key] = apply_merge(live.get(key, _MISSING), value, (*names, key))
        return result
    if isinstance(live, list) and isinstance(applied, list) and applied:
        kind, keys = _list_kind(names, applied)
        if kind == "set":
            return copy.deepcopy(applied) + [v for v in live if v not in applied]
        if kind == "map" and _is_keyed(live, keys[:1]):
            live_by_key = {_key_token(i, keys): i for i in live}
            merged = [
                apply_merge(live_by_key.get(_key_token(i, keys), _MISSING), i, names)
                for i in applied
            ]
            wanted = {_key_token(i, keys) for i in applied}
            return merged + [copy.deepcopy(i) for i in live if _key_token(i, keys) not in wanted]
    return copy.deepcopy(applied)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def fields_v1(paths: Iterable[FieldPath]) -> Obj:
    """Render a set of field paths in the ``FieldsV1`` format of ``managedFields``."""
    root: Obj = {}
    for path in sorted(paths):
        node = root
        for token in path:
            node = node.setdefault(token, {})
        if not _is_leaf(path):
            node["."] = {}
    return root


def _tracked(obj: Obj, subresource: str) -> Obj:
    """The part of an object whose fields are owned (status only for the status subresource)."""
    if subresource == "status":
        return {"status": obj["status"]} if "status" in obj else {}
    tracked = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
    meta = {
        k: v
        for k, v in (obj.get("metadata") or {}).items()
        if k not in (*_SERVER_METADATA, "name", "namespace", "generateName")
    }
    if meta:
        tracked["metadata"] = meta
    else:
        tracked.pop("metadata", None)
    return tracked


# --------------------------------------------------------------------------------------------
# Defaults and validation


def _default_pod_spec(spec: Obj, *, pod: bool) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    if pod:
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            image = container.get("image", "")
            tag = image.rsplit("/", 1)[-1]
            latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
            container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("resources", {})
            for port in container.get("ports") or []:
                port.setdefault("protocol", "TCP")


def _default_template(obj: Obj) -> None:
    template = obj.setdefault("spec", {}).setdefault("template", {})
    _default_pod_spec(template.setdefault("spec", {}), pod=False)


class _Allocator:
    """Cluster IPs and node ports, handed out once each."""

    def __init__(self) -> None:
        self.next_ip = 1
        self.next_node_port = 30000

    def cluster_ip(self) -> str:
        self.next_ip += 1
        return f"10.96.{self.next_ip // 256}.{self.next_ip % 256}"

    def node_port(self) -> int:
        self.next_node_port += 1
        return self.next_node_port


def _apply_defaults(rt: ResourceType, obj: Obj, old: Obj | None, alloc: _Allocator) -> None:
    """Fill the defaults a real API server fills (see the module docstring for the list)."""
    kind = rt.kind if not rt.custom else ""
    spec = obj.get("spec")
    if kind == "Deployment":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        _default_template(obj)
    elif kind == "StatefulSet":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        strategy = spec.setdefault("updateStrategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
        spec.setdefault("revisionHistoryLimit", 10)
        retention = spec.setdefault("persistentVolumeClaimRetentionPolicy", {})
        retention.setdefault("whenDeleted", "Retain")
        retention.setdefault("whenScaled", "Retain")
        _default_template(obj)
    elif kind == "DaemonSet":
        spec = obj.setdefault("spec", {})
        strategy = spec.setdefault("updateStrategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", 1)
            rolling.setdefault("maxSurge", 0)
        spec.setdefault("revisionHistoryLimit", 10)
        _default_template(obj)
    elif kind == "Job":
        spec = obj.setdefault("spec", {})
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        template = spec.setdefault("template", {})
        _default_pod_spec(template.setdefault("spec", {}), pod=False)
        if not spec.get("manualSelector"):
            uid, name = obj["metadata"]["uid"], obj["metadata"]["name"]
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            labels = template.setdefault("metadata", {}).setdefault("labels", {})
            labels.update(
                {
                    "batch.kubernetes.io/controller-uid": uid,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": uid,
                    "job-name": name,
                }
            )
    elif kind == "Pod":
        _default_pod_spec(obj.setdefault("spec", {}), pod=True)
        obj.setdefault("status", {}).setdefault("phase", "Pending")
    elif kind == "Service":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        old_spec = (old or {}).get("spec", {})
        if spec["type"] != "ExternalName":
            if "clusterIP" not in spec:
                spec["clusterIP"] = old_spec.get("clusterIP") or alloc.cluster_ip()
            if spec["clusterIP"] != "None":
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
            else:
                spec.setdefault("clusterIPs", ["None"])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        old_ports = {p.get("port"): p for p in old_spec.get("ports") or []}
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
            if spec["type"] in ("NodePort", "LoadBalancer") and "nodePort" not in port:
                port["nodePort"] = (
                    old_ports.get(port.get("port"), {}).get("nodePort") or alloc.node_port()
                )
        if spec["type"] in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        obj.setdefault("status", {}).setdefault("loadBalancer", {})
    elif kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        labels = obj["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif kind == "Secret":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        if string_data:
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
    elif kind == "PersistentVolumeClaim":
        obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
        obj.setdefault("status", {}).setdefault("phase", "Pending")
    elif kind == "NetworkPolicy":
        spec = obj.setdefault("spec", {})
        if "policyTypes" not in spec:
            spec["policyTypes"] = ["Ingress", *(["Egress"] if "egress" in spec else [])]
    elif kind in ("RoleBinding", "ClusterRoleBinding"):
        for subject in obj.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                subject.setdefault("apiGroup", "")
            else:
                subject.setdefault("apiGroup", "rbac.authorization.k8s.io")
    elif kind == "CustomResourceDefinition" and isinstance(spec, dict):
        spec.setdefault("conversion", {"strategy": "None"})
    if rt.has_status:
        obj.setdefault("status", {})


def _validate(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
    name = obj["metadata"].get("name", "")
    causes: list[tuple[str, str]] = []
    pattern = (
        _DNS_LABEL if rt.kind in ("Namespace", "Service") and not rt.custom else _DNS_SUBDOMAIN
    )
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif not pattern.match(name) or len(name) > (63 if pattern is _DNS_LABEL else 253):
        causes.append(
            ("metadata.name", f'Invalid value: "{name}": must be a lowercase RFC 1123 name')
        )
    spec = obj.get("spec") or {}
    kind = "" if rt.custom else rt.kind
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        template = spec.get("template") or {}
        containers = (template.get("spec") or {}).get("containers") or []
        if not containers:
            causes.append(("spec.template.spec.containers", "Required value"))
        for n, container in enumerate(containers):
            for key in ("name", "image"):
                if not container.get(key):
                    causes.append((f"spec.template.spec.containers[{n}].{key}", "Required value"))
        if kind != "Job":
            match = (spec.get("selector") or {}).get("matchLabels") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not spec.get("selector"):
                causes.append(("spec.selector", "Required value"))
            elif any(labels.get(k) != v for k, v in match.items()):
                causes.append(
                    (
                        "spec.template.metadata.labels",
                        "Invalid value: selector does not match template labels",
                    )
                )
        elif (template.get("spec") or {}).get("restartPolicy") not in ("OnFailure", "Never"):
            causes.append(
                (
                    "spec.template.spec.restartPolicy",
                    'Unsupported value: supported values: "OnFailure", "Never"',
                )
            )
        if old is not None:
            old_spec = old.get("spec") or {}
            if spec.get("selector") != old_spec.get("selector"):
                causes.append(("spec.selector", "Invalid value: field is immutable"))
            if kind == "Job" and spec.get("template") != old_spec.get("template"):
                causes.append(("spec.template", "Invalid value: field is immutable"))
    elif kind == "Pod":
        for n, container in enumerate(spec.get("containers") or [{}]):
            for key in ("name", "image"):
                if not container.get(key):
                    causes.append((f"spec.containers[{n}].{key}", "Required value"))
    elif kind == "Service":
        for n, port in enumerate(spec.get("ports") or []):
            if not isinstance(port.get("port"), int):
                causes.append((f"spec.ports[{n}].port", "Required value"))
        if old is not None and spec.get("clusterIP") != (old.get("spec") or {}).get("clusterIP"):
            causes.append(("spec.clusterIP", "Invalid value: field is immutable"))
    elif kind == "CustomResourceDefinition":
        names = spec.get("names") or {}
        if name != f"{names.get('plural')}.{spec.get('group')}":
            causes.append(
                ("metadata.name", "Invalid value: must be spec.names.plural+'.'+spec.group")
            )
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(
                ("spec.scope", 'Unsupported value: supported values: "Cluster", "Namespaced"')
            )
        if not names.get("kind") or not spec.get("versions"):
            causes.append(("spec", "Required value: names.kind and versions"))
    if causes:
        raise _invalid(rt, name, causes)


# --------------------------------------------------------------------------------------------
# The server


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the fake received it (query values are lists, as from ``parse_qs``)."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Names one object for the helper methods."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))


_Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name
_Owner = tuple[str, str, str]  # manager, operation, subresource ("" or "status")


@dataclass
class _Stored:
    obj: Obj
    owners: dict[_Owner, set[FieldPath]] = field(default_factory=dict)
    times: dict[_Owner, str] = field(default_factory=dict)
    versions: dict[_Owner, str] = field(default_factory=dict)


class FakeApiServer:
    """A fake Kubernetes API server; use as a context manager or ``start()``/``stop()``."""

    def __init__(
        self,
        resources: Iterable[ResourceType] = BUILTIN_RESOURCES,
        *,
        token: str | None = None,
        establish_crds: bool = True,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        git_version: str = "v1.31.0-fake",
    ) -> None:
        self.token = token
        self.establish_crds = establish_crds
        self.git_version = git_version
        self._clock = clock
        self._lock = threading.RLock()
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in resources:
            self._types[(rt.group, rt.version, rt.plural)] = rt
        self._store: dict[_Key, _Stored] = {}
        self._rv = 1
        self._alloc = _Allocator()
        self.request_log: list[RequestRecord] = []
        self._fail_count = 0
        self._fail_status = 503
        self._latency_s = 0.0
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApiServer:
        """Listen on 127.0.0.1 (port 0 the first time, the same port after :meth:`down`)."""
        fake = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self._httpd = Server(("127.0.0.1", self.port), _Handler)
        self._httpd.fake = fake  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections; state is kept (see :meth:`up`)."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._stopping.clear()

    def down(self) -> None:
        """Simulate an API server that is down: connections are refused until :meth:`up`."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port with the same state."""
        if self._httpd is None:
            self.start()

    # -- fault injection ---------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` and a Status body, touching nothing."""
        with self._lock:
            self._fail_count, self._fail_status = n, status

    def set_latency(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (0 to stop); a stop ends the wait early."""
        self._latency_s = seconds

    # -- inspection and test helpers ---------------------------------------------------------

    def clear_request_log(self) -> None:
        with self._lock:
            self.request_log.clear()

    def requests(self, method: str | None = None) -> list[RequestRecord]:
        """Requests received so far, optionally only one method (``"GET"``, ``"PATCH"``...)."""
        with self._lock:
            return [r for r in self.request_log if method is None or r.method == method]

    def objects(
        self, api_version: str | None = None, kind: str | None = None, namespace: str | None = None
    ) -> list[Obj]:
        """Deep copies of stored objects (with apiVersion and kind), optionally filtered."""
        with self._lock:
            found = []
            for (_, _, ns, _), stored in sorted(self._store.items()):
                obj = stored.obj
                if api_version and obj["apiVersion"] != api_version:
                    continue
                if kind and obj["kind"] != kind:
                    continue
                if namespace is not None and ns != namespace:
                    continue
                found.append(copy.deepcopy(obj))
            return found

    def get_object(self, ref: ObjectRef | Mapping[str, Any]) -> Obj | None:
        with self._lock:
            rt, key = self._ref_key(ref)
            stored = self._store.get(key)
            return self._render(rt, stored) if stored else None

    def set_status(self, ref: ObjectRef | Mapping[str, Any], status: Obj) -> Obj:
        """Replace an object's status as a controller would: resourceVersion moves, generation
        does not. Returns the stored object."""
        with self._lock:
            rt, key = self._ref_key(ref)
            stored = self._store.get(key)
            if stored is None:
                raise KeyError(f"{rt.kind} {key[2]}/{key[3]} does not exist")
            new = copy.deepcopy(stored.obj)
            new["status"] = copy.deepcopy(status)
            return self._commit(
                rt, key, stored, new, ("fake-controller", "Update", "status"), False
            )

    def establish(self, crd_name: str) -> None:
        """Mark a CRD established (when the fake was built with ``establish_crds=False``)."""
        with self._lock:
            key = ("apiextensions.k8s.io", "customresourcedefinitions", "", crd_name)
            stored = self._store[key]
            stored.obj["status"] = self._crd_status(stored.obj)
            self._serve_crd(stored.obj)

    def write_kubeconfig(self, path: str | Path, *, context: str = "fake") -> Path:
        """Write a kubeconfig for this server (plain http; the token if one is set)."""
        path = Path(path)
        user: Obj = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": "default"},
                }
            ],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for this server (imports ``kubernetes``)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        if self.token:
            cfg.api_key = {"authorization": self.token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    # -- HTTP entry point --------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> tuple[int, Obj, dict[str, str]]:
        split = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        content_type = handler.headers.get("Content-Type", "").split(";")[0].strip()
        with self._lock:
            self.request_log.append(RequestRecord(handler.command, split.path, query, content_type))
            failing = self._fail_count > 0
            if failing:
                self._fail_count -= 1
        if self._latency_s:
            self._stopping.wait(self._latency_s)
        if failing:
            reasons = {
                429: "TooManyRequests",
                500: "InternalError",
                503: "ServiceUnavailable",
                504: "Timeout",
            }
            error = ApiError(
                self._fail_status,
                reasons.get(self._fail_status, "InternalError"),
                "injected failure",
            )
            headers = {"Retry-After": "1"} if self._fail_status in (429, 503) else {}
            return self._fail_status, error.body(), headers
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, ApiError(401, "Unauthorized", "Unauthorized").body(), {}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = self._decode(raw, content_type)
            user_agent = handler.headers.get("User-Agent", "unknown")
            code, answer = self._route(
                handler.command, split.path, query, content_type, body, user_agent
            )
            return code, answer, {}
        except ApiError as exc:
            return exc.code, exc.body(), {}

    @staticmethod
    def _decode(raw: bytes, content_type: str) -> Any:
        if not raw:
            return None
        try:
            if content_type.endswith("yaml"):
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, "BadRequest", f"could not decode the request body: {exc}") from exc

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        content_type: str,
        body: Any,
        user_agent: str,
    ) -> tuple[int, Obj]:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
        if method == "GET":
            discovery = self._discovery(parts)
            if discovery is not None:
                return 200, discovery
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = ""
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        with self._lock:
            rt = self._types.get((group, version, rest[0]))
            if rt is None or (namespace and not rt.namespaced):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            name = rest[1] if len(rest) >= 2 else ""
            sub = rest[2] if len(rest) == 3 else ""
            if sub and (sub != "status" or not rt.has_status):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            q = {k: v[-1] for k, v in query.items()}
            dry_run = q.get("dryRun") == "All"
            manager = q.get("fieldManager") or user_agent.split("/")[0]
            if query.get("watch") and q["watch"] in ("true", "1"):
                raise ApiError(405, "MethodNotAllowed", "watch is not supported by the fake")
            if not name:
                if method == "GET":
                    return 200, self._list(rt, namespace, q)
                if method == "POST":
                    return self._create(rt, namespace, body, manager, dry_run)
                if method == "DELETE":
                    return self._delete_collection(rt, namespace, q, dry_run)
                raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
            if rt.namespaced and not namespace:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            key = (rt.group, rt.plural, namespace, name)
            if method == "GET":
                stored = self._store.get(key)
                if stored is None:
                    raise _not_found(rt, name)
                return 200, self._render(rt, stored)
            if method == "PUT":
                return self._replace(rt, key, body, manager, sub, dry_run)
            if method == "PATCH":
                return self._patch(rt, key, body, content_type, q, manager, sub, dry_run)
            if method == "DELETE":
                return self._delete(rt, key, dry_run)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed")

    # -- discovery ---------------------------------------------------------------------------

    def _discovery(self, parts: list[str]) -> Obj | None:
        with self._lock:
            groups: dict[str, list[str]] = {}
            for group, version, _ in self._types:
                if group and version not in groups.setdefault(group, []):
                    groups[group].append(version)
            if parts == ["version"]:
                major, minor = self.git_version.lstrip("v").split(".")[:2]
                return {
                    "major": major,
                    "minor": minor,
                    "gitVersion": self.git_version,
                    "platform": "linux/amd64",
                }
            if parts == ["api"]:
                return {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                    ],
                }
            if parts == ["apis"]:
                return {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self._group(g, vs) for g, vs in sorted(groups.items())],
                }
            if len(parts) == 2 and parts[0] == "apis":
                if parts[1] not in groups:
                    raise ApiError(
                        404, "NotFound", "the server could not find the requested resource"
                    )
                return {
                    "kind": "APIGroup",
                    "apiVersion": "v1",
                    **self._group(parts[1], groups[parts[1]]),
                }
            if parts == ["api", "v1"]:
                return self._resource_list("", "v1")
            if len(parts) == 3 and parts[0] == "apis":
                if parts[2] not in groups.get(parts[1], []):
                    raise ApiError(
                        404, "NotFound", "the server could not find the requested resource"
                    )
                return self._resource_list(parts[1], parts[2])
            return None

    @staticmethod
    def _group(name: str, versions: list[str]) -> Obj:
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": entries, "preferredVersion": entries[0]}

    def _resource_list(self, group: str, version: str) -> Obj:
        resources = []
        for (g, v, _), rt in self._types.items():
            if (g, v) != (group, version):
                continue
            entry: Obj = {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": rt.verbs,
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            resources.append(entry)
            if rt.has_status:
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    # -- reads -------------------------------------------------------------------------------

    def _render(self, rt: ResourceType, stored: _Stored, *, in_list: bool = False) -> Obj:
        obj = copy.deepcopy(stored.obj)
        obj["apiVersion"] = rt.api_version
        managed = []
        for owner, paths in stored.owners.items():
            manager, operation, sub = owner
            entry: Obj = {
                "manager": manager,
                "operation": operation,
                "apiVersion": stored.versions.get(owner, rt.api_version),
                "time": stored.times[owner],
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(paths),
            }
            if sub:
                entry["subresource"] = sub
            managed.append(entry)
        if managed:
            obj["metadata"]["managedFields"] = managed
        if in_list and not rt.custom:
            obj.pop("apiVersion", None)
            obj.pop("kind", None)
        return obj

    def _list(self, rt: ResourceType, namespace: str, q: dict[str, str]) -> Obj:
        labels_ok = parse_label_selector(q.get("labelSelector", ""))
        fields_ok = _parse_field_selector(q.get("fieldSelector", ""))
        items = []
        for (group, plural, ns, _), stored in sorted(self._store.items()):
            if (group, plural) != (rt.group, rt.plural) or (namespace and ns != namespace):
                continue
            meta = stored.obj["metadata"]
            if labels_ok(meta.get("labels") or {}) and fields_ok(stored.obj):
                items.append(self._render(rt, stored, in_list=True))
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    # -- writes ------------------------------------------------------------------------------

    def _check_body(self, rt: ResourceType, body: Any, namespace: str, name: str | None) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be an object")
        obj = copy.deepcopy(body)
        if (
            obj.get("kind", rt.kind) != rt.kind
            or obj.get("apiVersion", rt.api_version) != rt.api_version
        ):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({obj.get('apiVersion')}) and kind "
                f"({obj.get('kind')}) do not match the URL ({rt.api_version}, {rt.kind})",
            )
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if name is not None and meta.get("name", name) != name:
            raise ApiError(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        if name is not None:
            meta["name"] = name
        for key in _SERVER_METADATA:
            if key != "resourceVersion":
                meta.pop(key, None)
        return obj

    def _require_namespace(self, rt: ResourceType, namespace: str) -> None:
        if rt.namespaced and ("", "namespaces", "", namespace) not in self._store:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )

    def _now(self) -> str:
        return self._clock().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _create(
        self, rt: ResourceType, namespace: str, body: Any, manager: str, dry_run: bool
    ) -> tuple[int, Obj]:
        obj = self._check_body(rt, body, namespace, None)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name", "")
        if meta.pop("resourceVersion", None):
            raise ApiError(
                400, "BadRequest", "resourceVersion should not be set on objects to be created"
            )
        self._require_namespace(rt, namespace)
        key = (rt.group, rt.plural, namespace, name)
        if name and key in self._store:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{_gr(rt)} "{name}" already exists',
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        if rt.has_status:
            obj.pop("status", None)
        stored = self._insert(rt, key, obj, dry_run)
        owner = (manager, "Update", "")
        paths = field_paths(_tracked(stored.obj, ""))
        if paths:
            stored.owners = {owner: paths}
            stored.times[owner] = self._now()
            stored.versions[owner] = rt.api_version
        return 201, self._render(rt, stored)

    def _insert(self, rt: ResourceType, key: _Key, obj: Obj, dry_run: bool) -> _Stored:
        """Default, validate and (unless dry-run) store a new object."""
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = self._now()
        if rt.has_generation:
            meta["generation"] = 1
        _apply_defaults(rt, obj, None, self._alloc)
        _validate(rt, obj, None)
        if rt.kind == "CustomResourceDefinition" and not rt.custom:
            self._check_crd_free(obj)
            if self.establish_crds:
                obj["status"] = self._crd_status(obj)
        stored = _Stored(obj)
        if not dry_run:
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._store[key] = stored
            if rt.kind == "CustomResourceDefinition" and self.establish_crds and not rt.custom:
                self._serve_crd(obj)
        return stored

    def _replace(
        self, rt: ResourceType, key: _Key, body: Any, manager: str, sub: str, dry_run: bool
    ) -> tuple[int, Obj]:
        stored = self._store.get(key)
        if stored is None:
            raise _not_found(rt, key[3])
        new = self._check_body(rt, body, key[2], key[3])
        sent_rv = new["metadata"].pop("resourceVersion", None)
        if sent_rv and sent_rv != stored.obj["metadata"]["resourceVersion"]:
            raise _conflict(rt, key[3])
        new = self._carry_over(rt, stored.obj, new, sub)
        return 200, self._commit(rt, key, stored, new, (manager, "Update", sub), dry_run)

    def _carry_over(self, rt: ResourceType, old: Obj, new: Obj, sub: str) -> Obj:
        """Keep what a write cannot change: server metadata; status or everything but status."""
        if sub == "status":
            result = copy.deepcopy(old)
            result["status"] = new.get("status", {})
            return result
        for key in _SERVER_METADATA:
            if key in old["metadata"] and key != "managedFields":
                new["metadata"][key] = old["metadata"][key]
        if rt.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        return new

    def _commit(
        self,
        rt: ResourceType,
        key: _Key,
        stored: _Stored,
        new: Obj,
        owner: _Owner,
        dry_run: bool,
        applied: set[FieldPath] | None = None,
        owners: dict[_Owner, set[FieldPath]] | None = None,
    ) -> Obj:
        """Default, validate, update ownership and store ``new`` over ``stored`` unless it is a
        no-op or a dry run. ``applied`` is the applier's field set for an Apply operation."""
        old = stored.obj
        sub = owner[2]
        _apply_defaults(rt, new, old, self._alloc)
        _validate(rt, new, old)
        if rt.has_generation and _spec_of(new) != _spec_of(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        owners = copy.deepcopy(owners if owners is not None else stored.owners)
        if applied is None:
            before, after = _tracked(old, sub), _tracked(new, sub)
            old_paths, new_paths = field_paths(before), field_paths(after)
            changed = {
                p
                for p in new_paths
                if p not in old_paths
                or (_is_leaf(p) and _value_at(before, p) != _value_at(after, p))
            }
            removed = old_paths - new_paths
            for other, paths in owners.items():
                if other[2] == sub:
                    paths -= changed | removed
            owners[owner] = owners.get(owner, set()) | changed
        else:
            owners[owner] = applied
        owners = {o: p for o, p in owners.items() if p}
        if new == old and owners == stored.owners:
            return self._render(rt, stored)
        result = _Stored(new, owners, dict(stored.times), dict(stored.versions))
        if owners.get(owner) != stored.owners.get(owner):
            result.times[owner] = self._now()
            result.versions[owner] = rt.api_version
        if not dry_run:
            self._rv += 1
            new["metadata"]["resourceVersion"] = str(self._rv)
            self._store[key] = result
            if rt.kind == "CustomResourceDefinition" and not rt.custom:
                self._unserve_crd(old)
                if _crd_established(new):
                    self._serve_crd(new)
        return self._render(rt, result)

    def _patch(
        self,
        rt: ResourceType,
        key: _Key,
        body: Any,
        content_type: str,
        q: dict[str, str],
        manager: str,
        sub: str,
        dry_run: bool,
    ) -> tuple[int, Obj]:
        if content_type == "application/apply-patch+yaml":
            return self._apply(rt, key, body, q, sub, dry_run)
        stored = self._store.get(key)
        if stored is None:
            raise _not_found(rt, key[3])
        current = self._render(rt, stored)
        current["metadata"].pop("managedFields", None)
        if content_type == "application/merge-patch+json":
            patched = merge_patch(current, body)
        elif content_type == "application/strategic-merge-patch+json":
            if rt.custom:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources",
                )
            patched = strategic_merge_patch(current, body)
        elif content_type == "application/json-patch+json":
            patched = json_patch(current, body)
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {content_type}",
            )
        new = self._check_body(rt, patched, key[2], key[3])
        sent_rv = new["metadata"].pop("resourceVersion", None)
        if sent_rv and sent_rv != stored.obj["metadata"]["resourceVersion"]:
            raise _conflict(rt, key[3])
        new = self._carry_over(rt, stored.obj, new, sub)
        return 200, self._commit(rt, key, stored, new, (manager, "Update", sub), dry_run)

    def _apply(
        self, rt: ResourceType, key: _Key, body: Any, q: dict[str, str], sub: str, dry_run: bool
    ) -> tuple[int, Obj]:
        manager = q.get("fieldManager", "")
        if not manager:
            raise ApiError(
                422, "Invalid", "PATCH, fieldManager: Required value: is required for apply patch"
            )
        force = q.get("force") in ("true", "1", "True")
        applied = _drop_nulls(self._check_body(rt, body, key[2], key[3]))
        sent_rv = applied["metadata"].pop("resourceVersion", None)
        owner: _Owner = (manager, "Apply", sub)
        tracked = _tracked(applied, sub)
        applied_paths = field_paths(tracked)
        stored = self._store.get(key)
        if stored is None:
            if sub:
                raise _not_found(rt, key[3])
            self._require_namespace(rt, key[2])
            obj = copy.deepcopy(applied)
            if rt.has_status:
                obj.pop("status", None)
            new_stored = self._insert(rt, key, obj, dry_run)
            new_stored.owners = {owner: applied_paths} if applied_paths else {}
            new_stored.times[owner] = self._now()
            new_stored.versions[owner] = rt.api_version
            return 201, self._render(rt, new_stored)
        if sent_rv and sent_rv != stored.obj["metadata"]["resourceVersion"]:
            raise _conflict(rt, key[3])
        live = stored.obj
        live_tracked = _tracked(live, sub)
        owners = copy.deepcopy(stored.owners)
        conflicts: list[tuple[str, FieldPath]] = []
        for other, paths in owners.items():
            if other == owner or other[2] != sub:
                continue
            for path in paths & applied_paths:
                if _is_leaf(path) and _value_at(live_tracked, path) != _value_at(tracked, path):
                    conflicts.append((other[0], path))
        if conflicts and not force:
            raise _apply_conflict(rt, key[3], conflicts)
        for other_manager, path in conflicts:
            for other, paths in owners.items():
                if other[0] == other_manager and other[2] == sub:
                    paths.discard(path)
        if sub == "status":
            merged = copy.deepcopy(live)
            merged["status"] = apply_merge(
                live.get("status", {}), applied.get("status", {}), ("status",)
            )
        else:
            body_part = {k: v for k, v in applied.items() if k != "status"}
            merged = apply_merge(live, body_part)
        still_owned = set().union(
            *(p for o, p in owners.items() if o != owner and o[2] == sub), applied_paths
        )
        previously = owners.get(owner, set())
        for path in sorted(previously - still_owned, key=len):
            if any(p[: len(path)] == path for p in still_owned):
                continue  # someone still owns something below it (a list item's fields)
            _remove_at(merged, path)
            self._drop_emptied(merged, path[:-1], still_owned)
        merged = self._carry_over(rt, live, merged, sub) if sub != "status" else merged
        return 200, self._commit(rt, key, stored, merged, owner, dry_run, applied_paths, owners)

    @staticmethod
    def _drop_emptied(obj: Obj, path: FieldPath, owned: set[FieldPath]) -> None:
        """Remove maps left empty by a removal, below the top level, unless someone owns them."""
        while len(path) >= 2 and path[-1].startswith("f:"):
            value = _value_at(obj, path)
            if value != {} or path in owned:
                return
            _remove_at(obj, path)
            path = path[:-1]

    def _delete(self, rt: ResourceType, key: _Key, dry_run: bool) -> tuple[int, Obj]:
        stored = self._store.get(key)
        if stored is None:
            raise _not_found(rt, key[3])
        rendered = self._render(rt, stored)
        if not dry_run:
            self._remove(rt, key)
        if rt.kind in ("Namespace", "Pod", "CustomResourceDefinition") and not rt.custom:
            if rt.kind == "Namespace":
                rendered["status"] = {"phase": "Terminating"}
                rendered["metadata"]["deletionTimestamp"] = self._now()
            return 200, rendered
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": key[3],
                "group": rt.group,
                "kind": rt.plural,
                "uid": stored.obj["metadata"]["uid"],
            },
        }

    def _remove(self, rt: ResourceType, key: _Key) -> None:
        stored = self._store.pop(key)
        self._rv += 1
        if rt.kind == "Namespace" and not rt.custom:
            for other in [k for k in self._store if k[2] == key[3]]:
                del self._store[other]
        if rt.kind == "CustomResourceDefinition" and not rt.custom:
            group = stored.obj["spec"]["group"]
            plural = stored.obj["spec"]["names"]["plural"]
            for other in [k for k in self._store if k[:2] == (group, plural)]:
                del self._store[other]
            self._unserve_crd(stored.obj)

    def _delete_collection(
        self, rt: ResourceType, namespace: str, q: dict[str, str], dry_run: bool
    ) -> tuple[int, Obj]:
        listed = self._list(rt, namespace, q)
        if not dry_run:
            for item in listed["items"]:
                meta = item["metadata"]
                key = (rt.group, rt.plural, meta.get("namespace", ""), meta["name"])
                if key in self._store:
                    self._remove(rt, key)
        return 200, listed

    # -- CRDs --------------------------------------------------------------------------------

    def _crd_status(self, crd: Obj) -> Obj:
        now = self._now()
        spec = crd["spec"]
        conditions = [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            }
            for kind, reason, message in (
                ("NamesAccepted", "NoConflicts", "no conflicts found"),
                ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            )
        ]
        return {
            "conditions": conditions,
            "acceptedNames": copy.deepcopy(spec["names"]),
            "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
        }

    def _crd_types(self, crd: Obj) -> list[ResourceType]:
        spec = crd["spec"]
        names = spec["names"]
        return [
            ResourceType(
                group=spec["group"],
                version=v["name"],
                plural=names["plural"],
                singular=names.get("singular") or names["kind"].lower(),
                kind=names["kind"],
                namespaced=spec["scope"] == "Namespaced",
                has_status="status" in (v.get("subresources") or {}),
                has_generation=True,
                short_names=tuple(names.get("shortNames") or ()),
                custom=True,
            )
            for v in spec["versions"]
            if v.get("served", True)
        ]

    def _check_crd_free(self, crd: Obj) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            existing = self._types.get((spec["group"], version["name"], spec["names"]["plural"]))
            if existing is not None and not existing.custom:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f"{spec['names']['plural']}.{spec['group']} is a built-in resource",
                )

    def _serve_crd(self, crd: Obj) -> None:
        for rt in self._crd_types(crd):
            self._types[(rt.group, rt.version, rt.plural)] = rt

    def _unserve_crd(self, crd: Obj) -> None:
        for rt in self._crd_types(crd):
            self._types.pop((rt.group, rt.version, rt.plural), None)

    # -- helpers -----------------------------------------------------------------------------

    def _ref_key(self, ref: ObjectRef | Mapping[str, Any]) -> tuple[ResourceType, _Key]:
        if not isinstance(ref, ObjectRef):
            ref = ObjectRef.of(ref)
        group, _, version = ref.api_version.rpartition("/")
        for (g, v, _), rt in self._types.items():
            if (g, v) == (group, version) and rt.kind == ref.kind:
                return rt, (g, rt.plural, ref.namespace or "", ref.name)
        raise KeyError(f"{ref.api_version} {ref.kind} is not served")


def _crd_established(crd: Obj) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _dotted(path: FieldPath) -> str:
    text = ""
    for token in path:
        if token.startswith("f:"):
            text += "." + token[2:]
        elif token.startswith("k:"):
            text += "[" + ",".join(f"{k}={v}" for k, v in json.loads(token[2:]).items()) + "]"
        else:
            text += "[=" + token[2:] + "]"
    return text


def _apply_conflict(
    rt: ResourceType, name: str, conflicts: list[tuple[str, FieldPath]]
) -> ApiError:
    lines = [f'conflict with "{m}": {_dotted(p)}' for m, p in sorted(conflicts)]
    plural = "s" if len(conflicts) > 1 else ""
    return ApiError(
        409,
        "Conflict",
        f"Apply failed with {len(conflicts)} conflict{plural}: " + "\n".join(lines),
        {
            "name": name,
            "group": rt.group,
            "kind": rt.plural,
            "causes": [
                {
                    "reason": "FieldManagerConflict",
                    "message": f'conflict with "{m}"',
                    "field": _dotted(p),
                }
                for m, p in sorted(conflicts)
            ],
        },
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-apiserver"

    def setup(self) -> None:
        super().setup()
        # headers and body are two writes: without this, Nagle + delayed ACK cost 40 ms each
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fake: FakeApiServer = self.server.fake  # type: ignore[attr-defined]
        with fake._lock:
            fake._connections.add(self.connection)

    def finish(self) -> None:
        fake: FakeApiServer = self.server.fake  # type: ignore[attr-defined]
        with fake._lock:
            fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _serve(self) -> None:
        fake: FakeApiServer = self.server.fake  # type: ignore[attr-defined]
        code, body, headers = fake._handle(self)
        payload = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass
