"""``AdminClient``: the operator's side of the stub's admin API (``/v1/admin/...``) over httpx.

One method per admin route; each sends one request with the operator credential as a bearer
token and returns the decoded JSON answer. Nothing here prints, reads argv or decides an
exit code: that is ``mgmt_stub.cli``. The credential is held in the client's headers only; it
is never part of a message, a URL or an exception.

Errors, by whose fault they are::

    ClientError                  root of everything this module raises
    ├── ApiError                 the server answered with an error (RFC 9457 problem details:
    │                            ``status`` and the one-line ``detail``), or with something
    │                            that is not the JSON it should be
    ├── UnreachableError         no answer: connection refused, DNS, TLS, timeout, a dropped
    │                            connection; names the server URL
    └── LocalError               a local file: the credential file, a profile folder, the
                                 export destination

Every request has a timeout (``timeout_s``). HTTPS is verified against the system trust
store, or against ``ca_file`` when given. Redirects are not followed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

DEFAULT_SERVER = "http://127.0.0.1:8700"
DEFAULT_TIMEOUT_S = 30.0
MAX_DETAIL_CHARS = 400
_PROFILE_KEYS = {"name", "description", "settings", "layers"}


class ClientError(Exception):
    """Root of the admin client's errors."""


class ApiError(ClientError):
    """The server refused the request (or answered with something unreadable)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status
        self.detail = detail


class UnreachableError(ClientError):
    """The server gave no answer: refused, unresolvable, TLS failure, timeout."""


class LocalError(ClientError):
    """A local file the command needs is missing, unreadable or malformed."""


@dataclass(frozen=True, slots=True)
class ExportedBundle:
    path: Path
    revision: int
    sha256: str
    size: int


def read_credential(path: Path) -> str:
    """The operator credential from a file (first line, surrounding whitespace removed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalError(f"cannot read credential file {path}: {_reason(exc)}") from None
    return check_credential(text, source=f"credential file {path}")


def check_credential(text: str, *, source: str) -> str:
    """A credential is one printable ASCII token; anything else is refused before use."""
    credential = text.strip()
    if not credential:
        raise LocalError(f"{source} is empty")
    if not (credential.isascii() and credential.isprintable()) or any(
        c.isspace() for c in credential
    ):
        raise LocalError(f"{source} does not hold one credential (one line, no spaces)")
    return credential


def profile_body(folder: Path) -> dict[str, Any]:
    """The JSON body of ``PUT /v1/admin/profiles/NAME`` read from a profile folder.

    ``profile.yaml`` gives the description, settings and layers; each layer's manifests are
    its folder's ``*.yaml``/``*.yml`` files in name order. Artifacts are refused: they are
    not uploaded over the API. The server checks the content itself; this only reads it.
    """
    spec_path = folder / "profile.yaml"
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LocalError(f"{folder} is not a profile folder: no profile.yaml") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise LocalError(f"cannot read {spec_path}: {_reason(exc)}") from None
    if not isinstance(spec, dict):
        raise LocalError(f"{spec_path}: expected a mapping with name, layers, ...")
    if spec.get("artifacts"):
        raise LocalError(
            f"{spec_path}: profile has artifacts, which are not uploaded over the API; "
            f"use 'mgmt-stub bundle build' for it"
        )
    unknown = sorted(str(k) for k in spec if k not in _PROFILE_KEYS and k != "artifacts")
    if unknown:
        raise LocalError(f"{spec_path}: unknown field(s) {', '.join(unknown)}")
    layers = spec.get("layers")
    if not isinstance(layers, list) or not layers:
        raise LocalError(f"{spec_path}: 'layers' must be a non-empty list of {{name, path}}")
    body_layers = []
    root = folder.resolve()
    for index, layer in enumerate(layers, start=1):
        if not (
            isinstance(layer, dict)
            and isinstance(layer.get("name"), str)
            and isinstance(layer.get("path"), str)
        ):
            raise LocalError(f"{spec_path}: layer {index} must be a mapping with name and path")
        layer_dir = (folder / layer["path"]).resolve()
        if not layer_dir.is_relative_to(root):
            raise LocalError(f"{spec_path}: layer {layer['name']!r} path leaves the profile folder")
        if not layer_dir.is_dir():
            raise LocalError(f"{spec_path}: layer {layer['name']!r}: {layer_dir} is not a folder")
        files = sorted(
            (p for p in layer_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()),
            key=lambda p: p.name,
        )
        manifests = {}
        for path in files:
            try:
                manifests[path.name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise LocalError(f"cannot read {path}: {_reason(exc)}") from None
        body_layers.append({"name": layer["name"], "manifests": manifests})
    body: dict[str, Any] = {"description": spec.get("description") or "", "layers": body_layers}
    if spec.get("settings") is not None:
        body["settings"] = spec["settings"]
    return body


class AdminClient:
    """The admin API of one server, as one operator. Use as a context manager."""

    def __init__(
        self,
        server: str,
        credential: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ca_file: Path | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise LocalError(f"cannot load CA bundle {ca_file}: {_reason(exc)}") from None
        self._http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {credential}", "Accept": "application/json"},
            timeout=timeout_s,
            verify=verify,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment sees the credential
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport -----------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer (None for 204)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, path, json=json, params=query, content=content, headers=headers
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        _raise_for_problem(response)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "the server's answer is not JSON") from None

    def _unreachable(self, exc: httpx.TransportError) -> UnreachableError:
        if isinstance(exc, httpx.TimeoutException):
            what = "timed out"
        elif isinstance(exc, httpx.ConnectError):
            what = f"cannot connect ({_reason(exc)})"
        else:
            what = f"connection failed ({type(exc).__name__}: {_reason(exc)})"
        return UnreachableError(f"server {self.server}: {what}")

    # -- profiles ------------------------------------------------------------------------
    def put_profile(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._call("PUT", f"/v1/admin/profiles/{_seg(name)}", json=body))

    def profiles(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/profiles")["profiles"])

    def profile(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/admin/profiles/{_seg(name)}"))

    # -- clusters ------------------------------------------------------------------------
    def clusters(self, selector: str | None = None) -> dict[str, Any]:
        """``{"clusters": [...], "now": TIME}``."""
        return dict(self._call("GET", "/v1/admin/clusters", params={"selector": selector}))

    def cluster(self, cluster_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/admin/clusters/{_seg(cluster_id)}"))

    def register_cluster(
        self, cluster_id: str, labels: Mapping[str, str], agent_key: str | None
    ) -> dict[str, Any]:
        body = {"cluster_id": cluster_id, "labels": dict(labels), "agent_key": agent_key}
        return dict(self._call("POST", "/v1/admin/clusters", json=body))

    def set_labels(self, cluster_id: str, labels: Mapping[str, str]) -> dict[str, Any]:
        path = f"/v1/admin/clusters/{_seg(cluster_id)}/labels"
        return dict(self._call("PUT", path, json={"labels": dict(labels)}))

    def set_agent_key(self, cluster_id: str, agent_key: str) -> dict[str, Any]:
        path = f"/v1/admin/clusters/{_seg(cluster_id)}/agent-key"
        return dict(self._call("PUT", path, json={"agent_key": agent_key}))

    def revoke_cluster(self, cluster_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/admin/clusters/{_seg(cluster_id)}/revoke"))

    # -- assignments and rollouts --------------------------------------------------------
    def put_assignment(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._call("PUT", f"/v1/admin/assignments/{_seg(name)}", json=body))

    def assignments(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/assignments")["assignments"])

    def assignment(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/admin/assignments/{_seg(name)}"))

    def delete_assignment(self, name: str) -> None:
        self._call("DELETE", f"/v1/admin/assignments/{_seg(name)}")

    def rollouts(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/rollouts")["rollouts"])

    def control_rollout(self, rollout_id: int, verb: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/admin/rollouts/{rollout_id}/{_seg(verb)}"))

    # -- tokens and operators ------------------------------------------------------------
    def create_token(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/admin/tokens", json=body))

    def tokens(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/tokens")["tokens"])

    def revoke_token(self, token_id: str) -> None:
        self._call("DELETE", f"/v1/admin/tokens/{_seg(token_id)}")

    def create_operator(self, name: str, role: str) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/admin/operators", json={"name": name, "role": role}))

    def operators(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/operators")["operators"])

    def revoke_operator(self, name: str) -> None:
        self._call("DELETE", f"/v1/admin/operators/{_seg(name)}")

    # -- actions, bundles, reports, audit ------------------------------------------------
    def queue_action(
        self, action_type: str, selector: Mapping[str, Any], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        body = {"type": action_type, "selector": dict(selector), "params": dict(params)}
        return dict(self._call("POST", "/v1/admin/actions", json=body))

    def actions(self, cluster_id: str | None = None) -> list[dict[str, Any]]:
        answer = self._call("GET", "/v1/admin/actions", params={"cluster_id": cluster_id})
        return list(answer["actions"])

    def bundles(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/bundles")["bundles"])

    def export_bundle(
        self, output: Path, *, cluster_id: str | None = None, selector: str | None = None
    ) -> ExportedBundle:
        """Stream the bundle to a temporary file beside ``output``, check its digest against
        the ETag, fsync, and rename it into place: ``output`` is whole or untouched."""
        query = {k: v for k, v in (("cluster_id", cluster_id), ("selector", selector)) if v}
        folder = output.parent
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=folder)
        except OSError as exc:
            raise LocalError(f"cannot write to {folder}: {_reason(exc)}") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                digest = hashlib.sha256()
                size = 0
                try:
                    with self._http.stream(
                        "GET", "/v1/admin/bundles/export", params=query
                    ) as response:
                        if response.status_code >= 400:
                            response.read()
                            _raise_for_problem(response)
                        for chunk in response.iter_bytes(1 << 16):
                            handle.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                        etag = response.headers.get("etag", "").strip('"')
                        revision_text = response.headers.get("x-edge-revision", "")
                except httpx.TransportError as exc:
                    raise self._unreachable(exc) from None
                if etag and etag != digest.hexdigest():
                    raise ApiError(
                        response.status_code,
                        f"the bundle received ({size} bytes) does not match its ETag; "
                        f"nothing was written to {output}",
                    )
                if not revision_text.isdigit():
                    raise ApiError(response.status_code, "the answer names no bundle revision")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, output)
        except OSError as exc:
            raise LocalError(f"cannot write {output}: {_reason(exc)}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync_dir(folder)
        return ExportedBundle(output, int(revision_text), digest.hexdigest(), size)

    def ingest(self, report: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/octet-stream"}
        return dict(self._call("POST", "/v1/admin/ingest", content=report, headers=headers))

    def receipt(self, cluster_id: str) -> bytes:
        """The signed receipt naming the cluster's ingested status reports."""
        doc = self._call("GET", f"/v1/admin/clusters/{_seg(cluster_id)}/receipt")
        return base64.b64decode(doc["receipt"])

    def audit(self, limit: int) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/admin/audit", params={"limit": limit})["audit"])


def _raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    detail = ""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        detail = str(doc.get("detail") or doc.get("title") or "")
    detail = " ".join(detail.split())[:MAX_DETAIL_CHARS] or (
        response.reason_phrase or "request failed"
    )
    raise ApiError(response.status_code, detail)


def _seg(value: str) -> str:
    """One URL path segment: a name can never add a segment or a query."""
    return quote(value, safe="")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split())[:200] or type(exc).__name__
