"""Build and sign a bundle archive from a profile folder.

A profile folder holds ``profile.yaml``::

    name: hello-web
    description: free text
    settings: {mode: enforce, reconcile_interval_s: 60, sync_interval_s: 300}
    #   optional: stale_after_s: 2592000 (30 days without contact or a new bundle), on_stale: audit,
    #   maintenance_windows: ["Sat 02:00-04:00"] (site time), urgent: true (this revision at once)
    layers:                       # applied in this order
      - {name: base, path: layers/base}
      - {name: app, path: layers/app}
    artifacts:                    # optional
      - {path: artifacts/images.tar, kind: image-archive}

``name`` (default: the folder name) becomes the bundle_id prefix, so it must be 1-64
characters of ``[A-Za-z0-9._-]`` starting alphanumeric. Each layer folder's
``*.yaml``/``*.yml`` files (sorted by name) are its manifests; they are checked with the
agent's own strict loader, and the finished metadata with the agent's own parser
(``parse_metadata``) and default size limits, before anything is signed, so that a
profile the agents would refuse never leaves the management side. Every problem is a
one-line ``ProfileError``. The archive is laid out as docs/bundle-format.md says:
``roots/N.json`` (the root chain), ``bundle.json``, then ``payload/...``; it is written
deterministically (fixed owner, mode and mtime) to a temporary file and renamed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
import tarfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_agent.bundle import canonical
from edge_agent.bundle.envelope import BUNDLE_PAYLOAD_TYPE
from edge_agent.bundle.manifests import load_manifests
from edge_agent.bundle.model import BUNDLE_TYPE, FORMAT_VERSION, parse_metadata
from edge_agent.bundle.verify import Limits
from edge_agent.clock import format_time
from edge_agent.errors import BundleError
from mgmt_stub.keys import KeyDirectory, sign_envelope


class ProfileError(Exception):
    """The profile folder cannot be turned into a bundle."""


@dataclass(frozen=True, slots=True)
class PayloadFile:
    path: str  # path inside the bundle, below payload/
    source: Path
    sha256: str
    length: int


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    settings: Mapping[str, Any]
    layers: tuple[tuple[str, tuple[PayloadFile, ...]], ...]
    artifacts: tuple[tuple[PayloadFile, str], ...]


# Agents' default limits: a profile must not need more than any agent accepts.
_AGENT_LIMITS = Limits()
# The bundle_id is "<profile name>-r<revision>-<12 hex>"; 64 characters leave room for the
# rest within the 128 the format allows, and the characters are the bundle_id's own.
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LAYER_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_PROFILE_FIELDS = {"name", "description", "settings", "layers", "artifacts"}
_SETTINGS = {"mode": "enforce", "reconcile_interval_s": 60, "sync_interval_s": 300}
# Signed only when the profile gives them: absent means "authoritative forever".
_OPTIONAL_SETTINGS = ("stale_after_s", "on_stale", "maintenance_windows", "urgent")


def load_profile(folder: Path) -> Profile:
    """Read and check ``profile.yaml`` and the files it names; raise ProfileError if unusable.

    Only the structure is checked here (which fields, of which types); the values are
    checked by the agent's own metadata parser before anything is signed (``build_bundle``).
    """
    spec_path = folder / "profile.yaml"
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read {spec_path}: {exc}") from None
    if not isinstance(spec, dict):
        raise ProfileError(f"{spec_path} must be a mapping with 'name' and a 'layers' list")
    unknown = sorted(str(k) for k in spec if k not in _PROFILE_FIELDS)
    if unknown:
        raise ProfileError(
            f"{spec_path}: unknown field {unknown[0][:40]!r} "
            f"(expected {', '.join(sorted(_PROFILE_FIELDS))})"
        )
    name = _profile_name(spec.get("name", folder.name), spec_path)
    settings = _settings(spec.get("settings"), spec_path)
    root = folder.resolve()

    layers_spec = spec.get("layers")
    if not isinstance(layers_spec, list) or not layers_spec:
        raise ProfileError(f"{spec_path}: 'layers' must be a non-empty list of {{name, path}}")
    layers: list[tuple[str, tuple[PayloadFile, ...]]] = []
    for index, layer in enumerate(layers_spec, start=1):
        layer_name, rel = _entry(layer, f"layer {index}", spec_path, required=("name", "path"))
        if not _LAYER_NAME.fullmatch(layer_name):
            raise ProfileError(
                f"{spec_path}: layer name {layer_name[:64]!r} must be 1-63 characters of "
                f"[a-z0-9-], starting and ending alphanumeric"
            )
        if any(layer_name == seen for seen, _ in layers):
            raise ProfileError(f"{spec_path}: layer name {layer_name!r} is used twice")
        source_dir = (folder / rel).resolve()
        if not source_dir.is_dir() or root not in source_dir.parents:
            raise ProfileError(f"layer {layer_name!r}: {rel!r} is not a folder inside the profile")
        files = sorted(
            p for p in source_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )
        if not files:
            raise ProfileError(f"layer {layer_name!r} has no .yaml files in {source_dir}")
        payload = []
        for source in files:
            data = source.read_bytes()
            path = f"layers/{layer_name}/{source.name}"
            if len(data) > _AGENT_LIMITS.max_manifest_bytes:
                raise ProfileError(
                    f"manifest {path!r} is {len(data)} bytes; agents accept at most "
                    f"{_AGENT_LIMITS.max_manifest_bytes} per manifest"
                )
            try:
                load_manifests(data, path=path, limits=_AGENT_LIMITS.yaml)
            except BundleError as exc:
                raise ProfileError(str(exc)) from None
            payload.append(PayloadFile(path, source, hashlib.sha256(data).hexdigest(), len(data)))
        layers.append((layer_name, tuple(payload)))

    artifacts_spec = spec.get("artifacts")
    if artifacts_spec is None:
        artifacts_spec = []
    if not isinstance(artifacts_spec, list):
        raise ProfileError(f"{spec_path}: 'artifacts' must be a list of {{path, kind}}")
    artifacts: list[tuple[PayloadFile, str]] = []
    sources: dict[str, str] = {}
    for index, artifact in enumerate(artifacts_spec, start=1):
        rel, kind = _entry(
            artifact, f"artifact {index}", spec_path, required=("path",), optional=("kind",)
        )
        source = (folder / rel).resolve()
        if not source.is_file() or root not in source.parents:
            raise ProfileError(f"artifact {rel!r} is not a file inside the profile")
        path = f"artifacts/{source.name}"
        if path in sources:
            raise ProfileError(
                f"artifacts {sources[path]!r} and {rel!r} would both be {path!r} in the bundle; "
                f"rename one"
            )
        sources[path] = rel
        artifacts.append((hash_file(path, source), kind or "file"))
    total = sum(f.length for _, layer_files in layers for f in layer_files)
    if total > _AGENT_LIMITS.max_total_manifest_bytes:
        raise ProfileError(
            f"manifests are {total} bytes in total; agents accept at most "
            f"{_AGENT_LIMITS.max_total_manifest_bytes}"
        )
    return Profile(name, settings, tuple(layers), tuple(artifacts))


def _profile_name(name: Any, spec_path: Path) -> str:
    if not isinstance(name, str) or not _PROFILE_NAME.fullmatch(name):
        raise ProfileError(
            f"{spec_path}: profile name {str(name)[:64]!r} must be 1-64 characters of "
            f"[A-Za-z0-9._-], starting alphanumeric (it becomes the bundle_id prefix)"
        )
    return name


def _settings(settings: Any, spec_path: Path) -> dict[str, Any]:
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ProfileError(f"{spec_path}: 'settings' must be a mapping")
    known = (*_SETTINGS, *_OPTIONAL_SETTINGS)
    unknown = sorted(str(k) for k in settings if k not in known)
    if unknown:
        raise ProfileError(
            f"{spec_path}: unknown setting {unknown[0][:40]!r} "
            f"(expected {', '.join(sorted(known))})"
        )
    chosen = {key: settings.get(key, default) for key, default in _SETTINGS.items()}
    chosen.update({key: settings[key] for key in _OPTIONAL_SETTINGS if key in settings})
    return chosen


def _entry(
    entry: Any,
    what: str,
    spec_path: Path,
    *,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """The string fields of one layer or artifact entry, in the order asked ("" if absent)."""
    fields = required + optional
    expected = ", ".join(fields)
    if not isinstance(entry, dict):
        raise ProfileError(
            f"{spec_path}: {what} must be a mapping with {expected}, "
            f"found {type(entry).__name__} {str(entry)[:64]!r}"
        )
    unknown = sorted(str(k) for k in entry if k not in fields)
    if unknown:
        raise ProfileError(
            f"{spec_path}: {what} has unknown field {unknown[0][:40]!r} (expected {expected})"
        )
    values = []
    for field in fields:
        value = entry.get(field)
        if value is None and field in optional:
            values.append("")
            continue
        if not isinstance(value, str) or not value:
            raise ProfileError(f"{spec_path}: {what} needs a non-empty string {field!r}")
        values.append(value)
    return tuple(values)


def hash_file(path: str, source: Path) -> PayloadFile:
    hasher = hashlib.sha256()
    length = 0
    with source.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
            length += len(chunk)
    return PayloadFile(path, source, hasher.hexdigest(), length)


def metadata_payload(
    profile: Profile,
    *,
    target: Mapping[str, Any],
    revision: int,
    issued_at: dt.datetime,
    expires_at: dt.datetime,
    bundle_id: str | None = None,
) -> bytes:
    files = [f for _, layer in profile.layers for f in layer] + [a for a, _ in profile.artifacts]
    return canonical.encode(
        {
            "_type": BUNDLE_TYPE,
            "format_version": FORMAT_VERSION,
            "bundle_id": bundle_id or f"{profile.name}-r{revision}-{uuid.uuid4().hex[:12]}",
            "target": dict(target),
            "revision": revision,
            "issued_at": format_time(issued_at),
            "expires_at": format_time(expires_at),
            "settings": dict(profile.settings),
            "layers": [{"name": n, "manifests": [f.path for f in fs]} for n, fs in profile.layers],
            "artifacts": [{"path": a.path, "kind": kind} for a, kind in profile.artifacts],
            "files": {f.path: {"sha256": f.sha256, "length": f.length} for f in files},
        }
    )


def build_bundle(
    profile_dir: Path,
    *,
    keys: KeyDirectory,
    target: Mapping[str, Any],
    revision: int,
    output: Path,
    now: dt.datetime,
    expires_days: int = 30,
    gzip: bool = False,
) -> str:
    """Build, sign and write one bundle; return its bundle id."""
    profile = load_profile(profile_dir)
    payload = metadata_payload(
        profile,
        target=target,
        revision=revision,
        issued_at=now,
        expires_at=now + dt.timedelta(days=expires_days),
    )
    try:  # refuse at build time anything an agent would refuse
        metadata = parse_metadata(payload, max_bytes=_AGENT_LIMITS.max_metadata_bytes)
    except BundleError as exc:
        raise ProfileError(f"{profile_dir}: agents would refuse this bundle: {exc}") from None
    envelope = sign_envelope(BUNDLE_PAYLOAD_TYPE, payload, keys.policy_signers())
    if len(envelope) > _AGENT_LIMITS.max_metadata_bytes:
        raise ProfileError(
            f"bundle.json would be {len(envelope)} bytes; agents accept at most "
            f"{_AGENT_LIMITS.max_metadata_bytes}"
        )
    roots = [(v, keys.root_envelope(v)) for v in keys.root_versions() if v > 1]
    files = [f for _, layer in profile.layers for f in layer] + [a for a, _ in profile.artifacts]
    write_archive(
        output, roots=roots, envelope=envelope, files=files, mtime=int(now.timestamp()), gzip=gzip
    )
    return metadata.bundle_id


def write_archive(
    output: Path,
    *,
    roots: Iterable[tuple[int, bytes]],
    envelope: bytes,
    files: Iterable[PayloadFile],
    mtime: int,
    gzip: bool = False,
) -> None:
    """Write the archive members in the order the format requires, atomically."""
    tmp = output.with_name(f".{output.name}.partial")
    try:
        with tarfile.open(tmp, "w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as archive:
            for version, data in roots:
                _add_bytes(archive, f"roots/{version}.json", data, mtime)
            _add_bytes(archive, "bundle.json", envelope, mtime)
            for payload in files:
                info = _info(f"payload/{payload.path}", payload.length, mtime)
                with payload.source.open("rb") as handle:
                    archive.addfile(info, handle)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    archive.addfile(_info(name, len(data), mtime), io.BytesIO(data))
