"""Build and sign a bundle archive from a profile folder.

A profile folder holds ``profile.yaml``::

    name: hello-web
    description: free text
    settings: {mode: enforce, reconcile_interval_s: 60, sync_interval_s: 300}
    layers:                       # applied in this order
      - {name: base, path: layers/base}
      - {name: app, path: layers/app}
    artifacts:                    # optional
      - {path: artifacts/images.tar, kind: image-archive}

Each layer folder's ``*.yaml``/``*.yml`` files (sorted by name) are its manifests; they
are checked with the agent's own strict loader so that a profile the agents would refuse
never leaves the management side. The archive is laid out as docs/bundle-format.md says:
``roots/N.json`` (the root chain), ``bundle.json``, then ``payload/...``; it is written
deterministically (fixed owner, mode and mtime) to a temporary file and renamed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import tarfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_agent.bundle import canonical
from edge_agent.bundle.envelope import BUNDLE_PAYLOAD_TYPE
from edge_agent.bundle.manifests import YamlLimits, load_manifests
from edge_agent.bundle.model import BUNDLE_TYPE, FORMAT_VERSION, check_relative_path
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


def load_profile(folder: Path) -> Profile:
    spec_path = folder / "profile.yaml"
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read {spec_path}: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list):
        raise ProfileError(f"{spec_path} must be a mapping with a 'layers' list")
    settings = spec.get("settings") or {}
    settings = {
        "mode": settings.get("mode", "enforce"),
        "reconcile_interval_s": settings.get("reconcile_interval_s", 60),
        "sync_interval_s": settings.get("sync_interval_s", 300),
    }
    layers = []
    for layer in spec["layers"]:
        name, rel = layer.get("name"), layer.get("path")
        source_dir = (folder / str(rel)).resolve()
        if not source_dir.is_dir() or folder.resolve() not in source_dir.parents:
            raise ProfileError(f"layer {name!r}: {rel!r} is not a folder inside the profile")
        files = sorted(
            p for p in source_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )
        if not files:
            raise ProfileError(f"layer {name!r} has no .yaml files in {source_dir}")
        payload = []
        for source in files:
            data = source.read_bytes()
            path = f"layers/{name}/{source.name}"
            try:
                load_manifests(data, path=path, limits=YamlLimits())
            except BundleError as exc:
                raise ProfileError(str(exc)) from None
            payload.append(PayloadFile(path, source, hashlib.sha256(data).hexdigest(), len(data)))
        layers.append((str(name), tuple(payload)))
    artifacts = []
    for artifact in spec.get("artifacts") or []:
        source = (folder / str(artifact.get("path"))).resolve()
        if not source.is_file() or folder.resolve() not in source.parents:
            raise ProfileError(
                f"artifact {artifact.get('path')!r} is not a file inside the profile"
            )
        artifacts.append(
            (hash_file(f"artifacts/{source.name}", source), str(artifact.get("kind", "file")))
        )
    for _, layer_files in layers:
        for payload_file in layer_files:
            check_relative_path(payload_file.path)
    return Profile(str(spec.get("name", folder.name)), settings, tuple(layers), tuple(artifacts))


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
    envelope = sign_envelope(BUNDLE_PAYLOAD_TYPE, payload, keys.policy_signers())
    roots = [(v, keys.root_envelope(v)) for v in keys.root_versions() if v > 1]
    files = [f for _, layer in profile.layers for f in layer] + [a for a, _ in profile.artifacts]
    write_archive(
        output, roots=roots, envelope=envelope, files=files, mtime=int(now.timestamp()), gzip=gzip
    )
    return str(canonical.decode(payload, max_bytes=1 << 20)["bundle_id"])


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


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    archive.addfile(_info(name, len(data), mtime), io.BytesIO(data))
