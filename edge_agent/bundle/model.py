"""The values of the bundle format: roots, bundle metadata, and what verification yields.

Every class here is a frozen value. ``parse_root`` and ``parse_metadata`` turn an already
signature-checked payload into a value, rejecting any field that is missing, unknown, of the
wrong type or out of range (docs/bundle-format.md is the normative list). Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.bundle import canonical
from edge_agent.bundle.envelope import Role, keyid_for
from edge_agent.clock import parse_time
from edge_agent.errors import BundleError
from edge_agent.errors import BundleErrorCode as Code
from edge_agent.gate import parse_windows

FORMAT_VERSION = 1
ROOT_TYPE = "edge-agent/root"
BUNDLE_TYPE = "edge-agent/bundle"
MAX_REVISION = 2**53 - 1

_HEX64 = re.compile(r"[0-9a-f]{64}")
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CLUSTER_ID = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_LABEL_KEY = re.compile(
    r"([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")
_LAYER_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
MAX_PATH_DEPTH = 8


class Mode(enum.Enum):
    ENFORCE = "enforce"
    AUDIT = "audit"


@dataclass(frozen=True, slots=True)
class Root:
    """A root document: the keys this site trusts and which roles they may sign."""

    version: int
    expires_at: dt.datetime
    keys: Mapping[str, bytes]  # key id -> raw Ed25519 public key
    root_role: Role
    policy_role: Role


@dataclass(frozen=True, slots=True)
class Target:
    """Which clusters a bundle is for: one cluster id, or every cluster with these labels."""

    cluster_id: str | None
    labels: Mapping[str, str] | None

    def matches(self, cluster_id: str, labels: Mapping[str, str]) -> bool:
        if self.cluster_id is not None:
            return self.cluster_id == cluster_id
        assert self.labels is not None
        return all(labels.get(k) == v for k, v in self.labels.items())

    def describe(self) -> str:
        if self.cluster_id is not None:
            return f"cluster {self.cluster_id}"
        assert self.labels is not None
        return "labels " + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))

    def to_json(self) -> dict[str, Any]:
        if self.cluster_id is not None:
            return {"cluster_id": self.cluster_id}
        return {"labels": dict(self.labels or {})}


class StaleAction(enum.Enum):
    REPORT = "report"
    AUDIT = "audit"


#: bounds of ``settings.stale_after_s``: five minutes to ten years.
MIN_STALE_AFTER_S = 300
MAX_STALE_AFTER_S = 10 * 365 * 86400


@dataclass(frozen=True, slots=True)
class Settings:
    """Agent settings carried by the policy."""

    mode: Mode
    reconcile_interval_s: int
    sync_interval_s: int
    #: how long the policy stays authoritative without contact with management or a new
    #: bundle; None (the key absent) = forever, the right default for air-gapped sites.
    stale_after_s: int | None = None
    #: what a stale policy does: ``report`` (keep enforcing, say so) or ``audit`` (stop
    #: changing the cluster, only report drift).
    on_stale: StaleAction = StaleAction.REPORT
    #: when a new revision may be applied on this site (``gate``); empty: at once.
    maintenance_windows: tuple[str, ...] = ()
    #: this revision applies at once, outside the maintenance windows (not through a hold).
    urgent: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "reconcile_interval_s": self.reconcile_interval_s,
            "sync_interval_s": self.sync_interval_s,
            "stale_after_s": self.stale_after_s,
            "on_stale": self.on_stale.value,
            "maintenance_windows": list(self.maintenance_windows),
            "urgent": self.urgent,
        }


@dataclass(frozen=True, slots=True)
class FileEntry:
    sha256: str
    length: int


@dataclass(frozen=True, slots=True)
class LayerSpec:
    name: str
    manifests: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArtifactSpec:
    path: str
    kind: str


@dataclass(frozen=True, slots=True)
class BundleMetadata:
    bundle_id: str
    target: Target
    revision: int
    issued_at: dt.datetime
    expires_at: dt.datetime
    settings: Settings
    layers: tuple[LayerSpec, ...]
    artifacts: tuple[ArtifactSpec, ...]
    files: Mapping[str, FileEntry]

    def manifest_paths(self) -> frozenset[str]:
        """The payload paths that are manifests (all others are artifacts)."""
        return frozenset(p for layer in self.layers for p in layer.manifests)


ARTIFACT_KINDS = frozenset({"image-archive", "file"})


def check_relative_path(path: str) -> None:
    """Raise ValueError unless ``path`` is a safe relative path (see the format spec)."""
    if not path or len(path.encode("utf-8")) > 255:
        raise ValueError(f"path {path[:80]!r} is empty or longer than 255 bytes")
    parts = path.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        raise ValueError(f"path {path[:80]!r} is deeper than {MAX_PATH_DEPTH} components")
    for part in parts:
        if not _PATH_COMPONENT.fullmatch(part):
            raise ValueError(f"path {path[:80]!r} has an unsafe component {part[:40]!r}")


def parse_root(payload: bytes, *, max_bytes: int) -> Root:
    """Parse a signature-checked root payload."""
    doc = _decode(payload, "root", max_bytes, Code.ROOT_INVALID)
    _require_type(doc, ROOT_TYPE, "root")
    _exact_keys(
        doc,
        {"_type", "format_version", "version", "expires_at", "keys", "roles"},
        "root",
        Code.ROOT_INVALID,
    )
    _format_version(doc, "root")
    version = _int(doc["version"], "root version", 1, MAX_REVISION, Code.ROOT_INVALID)
    expires_at = _time(doc["expires_at"], "root expires_at", Code.ROOT_INVALID)
    keys_doc = doc["keys"]
    if not isinstance(keys_doc, dict) or not keys_doc:
        raise BundleError(Code.ROOT_INVALID, "root keys must be a non-empty object")
    keys: dict[str, bytes] = {}
    for keyid, key in keys_doc.items():
        if (
            not isinstance(key, dict)
            or set(key) != {"keytype", "public"}
            or key["keytype"] != "ed25519"
        ):
            raise BundleError(Code.ROOT_INVALID, f"root key {keyid[:16]!r} is not an ed25519 key")
        public = key["public"]
        if not isinstance(public, str) or not re.fullmatch(r"[0-9a-f]{64}", public):
            raise BundleError(
                Code.ROOT_INVALID, f"root key {keyid[:16]!r} public value is not 64 hex digits"
            )
        raw = bytes.fromhex(public)
        if keyid_for(raw) != keyid:
            raise BundleError(
                Code.ROOT_INVALID, f"root key id {keyid[:16]!r} does not match its key"
            )
        keys[keyid] = raw
    roles_doc = doc["roles"]
    if not isinstance(roles_doc, dict) or set(roles_doc) != {"root", "policy"}:
        raise BundleError(Code.ROOT_INVALID, "root roles must be exactly 'root' and 'policy'")
    roles = {name: _role(roles_doc[name], name, keys) for name in ("root", "policy")}
    return Root(version, expires_at, keys, roles["root"], roles["policy"])


def parse_metadata(payload: bytes, *, max_bytes: int) -> BundleMetadata:
    """Parse a signature-checked bundle metadata payload."""
    code = Code.METADATA_MALFORMED
    doc = _decode(payload, "bundle metadata", max_bytes, code)
    _require_type(doc, BUNDLE_TYPE, "bundle metadata")
    _exact_keys(
        doc,
        {
            "_type",
            "format_version",
            "bundle_id",
            "target",
            "revision",
            "issued_at",
            "expires_at",
            "settings",
            "layers",
            "artifacts",
            "files",
        },
        "bundle metadata",
        code,
    )
    _format_version(doc, "bundle metadata")
    bundle_id = doc["bundle_id"]
    if not isinstance(bundle_id, str) or not _BUNDLE_ID.fullmatch(bundle_id):
        raise BundleError(code, "bundle_id must be 1-128 characters of [A-Za-z0-9._-]")
    revision = _int(doc["revision"], "revision", 1, MAX_REVISION, code)
    issued_at = _time(doc["issued_at"], "issued_at", code)
    expires_at = _time(doc["expires_at"], "expires_at", code)
    if expires_at <= issued_at:
        raise BundleError(code, "expires_at is not after issued_at")

    files_doc = doc["files"]
    if not isinstance(files_doc, dict):
        raise BundleError(code, "files must be an object")
    files: dict[str, FileEntry] = {}
    for path, entry in files_doc.items():
        _path(path)
        if not isinstance(entry, dict) or set(entry) != {"sha256", "length"}:
            raise BundleError(code, f"file {path!r} must have exactly sha256 and length")
        digest = entry["sha256"]
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise BundleError(code, f"file {path!r} sha256 is not 64 lowercase hex digits")
        files[path] = FileEntry(
            digest, _int(entry["length"], f"file {path!r} length", 0, 2**62, code)
        )

    referenced: set[str] = set()

    def claim(path: Any, what: str) -> str:
        if not isinstance(path, str):
            raise BundleError(code, f"{what} must be a string path")
        _path(path)
        if path not in files:
            raise BundleError(code, f"{what} {path!r} is not listed in files")
        if path in referenced:
            raise BundleError(code, f"{what} {path!r} is referenced twice")
        referenced.add(path)
        return path

    layers_doc = doc["layers"]
    if not isinstance(layers_doc, list) or not layers_doc:
        raise BundleError(code, "layers must be a non-empty list")
    layers, layer_names = [], set()
    for layer in layers_doc:
        if not isinstance(layer, dict) or set(layer) != {"name", "manifests"}:
            raise BundleError(code, "each layer must have exactly name and manifests")
        name = layer["name"]
        if not isinstance(name, str) or not _LAYER_NAME.fullmatch(name) or name in layer_names:
            raise BundleError(code, f"layer name {str(name)[:64]!r} is invalid or repeated")
        layer_names.add(name)
        if not isinstance(layer["manifests"], list):
            raise BundleError(code, f"layer {name!r} manifests must be a list")
        manifests = tuple(claim(p, f"layer {name!r} manifest") for p in layer["manifests"])
        for path in manifests:
            if not path.endswith((".yaml", ".yml")):
                raise BundleError(code, f"manifest {path!r} must end in .yaml or .yml")
        layers.append(LayerSpec(name, manifests))

    artifacts_doc = doc["artifacts"]
    if not isinstance(artifacts_doc, list):
        raise BundleError(code, "artifacts must be a list")
    artifacts = []
    for artifact in artifacts_doc:
        if not isinstance(artifact, dict) or set(artifact) != {"path", "kind"}:
            raise BundleError(code, "each artifact must have exactly path and kind")
        if not isinstance(artifact["kind"], str) or artifact["kind"] not in ARTIFACT_KINDS:
            raise BundleError(code, f"artifact kind must be one of {sorted(ARTIFACT_KINDS)}")
        artifacts.append(ArtifactSpec(claim(artifact["path"], "artifact"), artifact["kind"]))

    unreferenced = sorted(set(files) - referenced)
    if unreferenced:
        raise BundleError(
            code, f"file {unreferenced[0]!r} is listed but used by no layer or artifact"
        )
    return BundleMetadata(
        bundle_id=bundle_id,
        target=_target(doc["target"]),
        revision=revision,
        issued_at=issued_at,
        expires_at=expires_at,
        settings=_settings(doc["settings"]),
        layers=tuple(layers),
        artifacts=tuple(artifacts),
        files=files,
    )


def _decode(payload: bytes, what: str, max_bytes: int, code: Code) -> dict[str, Any]:
    try:
        doc = canonical.decode(payload, max_bytes=max_bytes)
    except ValueError as exc:
        raise BundleError(code, f"{what}: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleError(code, f"{what}: expected a JSON object")
    return doc


def _require_type(doc: Mapping[str, Any], expected: str, what: str) -> None:
    if doc.get("_type") != expected:
        raise BundleError(
            Code.WRONG_TYPE,
            f"{what}: document type is {str(doc.get('_type'))[:40]!r}, expected {expected!r}",
        )


def _format_version(doc: Mapping[str, Any], what: str) -> None:
    version = doc["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise BundleError(
            Code.UNSUPPORTED_FORMAT,
            f"{what}: format_version {str(version)[:20]!r} is not supported (this agent reads {FORMAT_VERSION})",
        )


def _exact_keys(doc: Mapping[str, Any], expected: set[str], what: str, code: Code) -> None:
    missing, unknown = expected - set(doc), set(doc) - expected
    if missing:
        raise BundleError(code, f"{what}: missing field {sorted(missing)[0]!r}")
    if unknown:
        raise BundleError(code, f"{what}: unknown field {sorted(unknown)[0][:40]!r}")


def _int(value: Any, what: str, low: int, high: int, code: Code) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BundleError(code, f"{what} must be an integer from {low} to {high}")
    return value


def _time(value: Any, what: str, code: Code) -> dt.datetime:
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        return parse_time(value)
    except ValueError:
        raise BundleError(code, f"{what} must be a time in the form YYYY-MM-DDTHH:MM:SSZ") from None


def _path(path: str) -> None:
    try:
        check_relative_path(path)
    except ValueError as exc:
        raise BundleError(Code.UNSAFE_PATH, f"bundle metadata: {exc}") from None


def _role(doc: Any, name: str, keys: Mapping[str, bytes]) -> Role:
    if not isinstance(doc, dict) or set(doc) != {"keyids", "threshold"}:
        raise BundleError(
            Code.ROOT_INVALID, f"root role {name!r} must have exactly keyids and threshold"
        )
    keyids = doc["keyids"]
    if (
        not isinstance(keyids, list)
        or not keyids
        or not all(isinstance(k, str) for k in keyids)
        or len(set(keyids)) != len(keyids)
    ):
        raise BundleError(
            Code.ROOT_INVALID, f"root role {name!r} keyids must be a non-empty list without repeats"
        )
    for keyid in keyids:
        if keyid not in keys:
            raise BundleError(
                Code.ROOT_INVALID, f"root role {name!r} names key {str(keyid)[:16]!r} not in keys"
            )
    threshold = _int(
        doc["threshold"], f"root role {name!r} threshold", 1, len(keyids), Code.ROOT_INVALID
    )
    return Role(frozenset(keyids), threshold)


def _target(doc: Any) -> Target:
    code = Code.METADATA_MALFORMED
    if not isinstance(doc, dict) or len(doc) != 1:
        raise BundleError(code, "target must have exactly one of cluster_id or labels")
    if "cluster_id" in doc:
        cluster_id = doc["cluster_id"]
        if not isinstance(cluster_id, str) or not _CLUSTER_ID.fullmatch(cluster_id):
            raise BundleError(code, "target cluster_id is not a valid cluster id")
        return Target(cluster_id, None)
    if "labels" in doc:
        labels = doc["labels"]
        if not isinstance(labels, dict) or not labels:
            raise BundleError(code, "target labels must be a non-empty object")
        for key, value in labels.items():
            if (
                not _LABEL_KEY.fullmatch(key)
                or not isinstance(value, str)
                or not _LABEL_VALUE.fullmatch(value)
            ):
                raise BundleError(
                    code, f"target label {key[:64]!r} is not a valid Kubernetes label"
                )
        return Target(None, dict(labels))
    raise BundleError(code, "target must have exactly one of cluster_id or labels")


def _settings(doc: Any) -> Settings:
    code = Code.METADATA_MALFORMED
    if not isinstance(doc, dict):
        raise BundleError(code, "settings must be an object")
    required = {"mode", "reconcile_interval_s", "sync_interval_s"}
    optional = {"stale_after_s", "on_stale", "maintenance_windows", "urgent"} & doc.keys()
    _exact_keys(doc, required | optional, "settings", code)
    try:
        mode = Mode(doc["mode"])
    except (ValueError, TypeError):
        raise BundleError(code, "settings mode must be 'enforce' or 'audit'") from None
    stale_after_s = None
    if "stale_after_s" in doc:
        stale_after_s = _int(
            doc["stale_after_s"],
            "settings stale_after_s",
            MIN_STALE_AFTER_S,
            MAX_STALE_AFTER_S,
            code,
        )
    on_stale = StaleAction.REPORT
    if "on_stale" in doc:
        if stale_after_s is None:
            raise BundleError(code, "settings on_stale needs stale_after_s")
        try:
            on_stale = StaleAction(doc["on_stale"])
        except (ValueError, TypeError):
            raise BundleError(code, "settings on_stale must be 'report' or 'audit'") from None
    windows: tuple[str, ...] = ()
    if "maintenance_windows" in doc:
        try:
            parse_windows(doc["maintenance_windows"])
        except ValueError as exc:
            raise BundleError(code, f"settings {exc}") from None
        windows = tuple(doc["maintenance_windows"])
    urgent = doc.get("urgent", False)
    if not isinstance(urgent, bool):
        raise BundleError(code, "settings urgent must be true or false")
    return Settings(
        maintenance_windows=windows,
        urgent=urgent,
        mode=mode,
        reconcile_interval_s=_int(
            doc["reconcile_interval_s"], "settings reconcile_interval_s", 10, 86400, code
        ),
        sync_interval_s=_int(doc["sync_interval_s"], "settings sync_interval_s", 10, 86400, code),
        stale_after_s=stale_after_s,
        on_stale=on_stale,
    )


def is_valid_cluster_id(value: str) -> bool:
    return bool(_CLUSTER_ID.fullmatch(value))


def is_valid_label(key: str, value: str) -> bool:
    return bool(_LABEL_KEY.fullmatch(key) and _LABEL_VALUE.fullmatch(value))
