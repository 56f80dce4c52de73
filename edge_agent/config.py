"""The agent configuration: one YAML file, loaded once, checked strictly.

Example (every key but ``cluster_id`` and ``paths.initial_root`` has a default)::

    cluster_id: site-berlin-01          # DNS-style id; what bundles target
    timezone: Europe/Berlin             # site time for maintenance windows (default: the host's)
    labels: {region: eu, tier: edge}    # matched by label-selector bundles
    paths:
      state_dir: /var/lib/edge-agent    # the agent's private state (store, artifacts)
      initial_root: /etc/edge-agent/root.json   # trust anchor, used on first start only
      status_snapshot: /var/lib/edge-agent/status.json  # world-readable status copy
    drop_folders: ["/media/*/edge-bundles", "/var/lib/edge-agent/drop"]
    target:                             # where the policy is enforced (default: auto)
      kind: manifest-dir                # auto | kubernetes | manifest-dir
      folder: /var/lib/rancher/k3s/server/manifests
      layout: flat                      # flat (k3s/RKE2) | per-layer-dir (k0s)
      # kubeconfig: /etc/edge-agent/kubeconfig   (kubernetes; default: in-cluster account)
    limits:                             # bundle limits, bytes unless named otherwise
      max_bundle_bytes: 4294967296
      max_file_bytes: 2147483648
      max_manifest_bytes: 4194304
      max_metadata_bytes: 1048576
      max_members: 10000
      max_future_skew_s: 86400
    sync:                               # optional; absent = air-gapped, never connects
      server: https://mgmt.example.net  # https; plain http only to 127.0.0.1, localhost, ::1
      ca_bundle: /etc/edge-agent/ca.pem # PEM CAs to verify the server (default: system CAs)
      proxy: http://proxy.example:3128  # default: HTTPS_PROXY / NO_PROXY from the environment
      timeout_s: 10                     # connect, and each read and write, per request
      wait_s: 55                        # long poll asked of the server (1..300)
      enroll_token_file: /etc/edge-agent/enroll.token   # bootstrap token for first start
      retry_base_s: 5                   # backoff after failures: full jitter up to base*2^n,
      retry_max_s: 300                  #   capped (a Retry-After from the server wins)
    metrics:                            # optional; written/served by ``edge-agent run``
      textfile: /var/lib/node_exporter/textfile_collector/edge_agent.prom
      listen: 127.0.0.1:9479            # GET /metrics, loopback only

Unknown keys are errors (a misspelt key must not silently fall back to a default). Every
error is a ``ConfigError`` whose one-line message names the file, the key and the problem.
This module reads one file and does nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from edge_agent.bundle.model import is_valid_cluster_id, is_valid_label
from edge_agent.bundle.verify import Identity, Limits
from edge_agent.errors import ConfigError

DEFAULT_PATH = Path("/etc/edge-agent/config.yaml")
MAX_CONFIG_BYTES = 256 * 1024


TARGET_KINDS = ("auto", "kubernetes", "manifest-dir")
LAYOUTS = ("flat", "per-layer-dir")


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """Where the policy is enforced.

    ``auto`` (the default) uses the Kubernetes API when the agent runs in a cluster (a
    service account is mounted) or a kubeconfig is given; ``manifest-dir`` renders layers
    into a folder an edge distribution applies by itself (k3s/RKE2/k0s) and needs no
    credentials.
    """

    kind: str = "auto"
    kubeconfig: Path | None = None
    folder: Path | None = None
    layout: str = "flat"


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_WAIT_S = 300  # the server's own ceiling for a long poll (docs/management.md)


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """How to reach the management server. Absent from the config: the site is air-gapped.

    ``proxy`` None means the environment decides: ``HTTPS_PROXY`` (and ``ALL_PROXY``) with
    ``NO_PROXY`` exceptions, as curl reads them; a server on loopback never goes through a
    proxy. ``ca_bundle`` None means the system's CA store (not a bundled certifi copy), so a
    site's own PKI is honoured the way the rest of the host honours it.
    """

    server: str  # base URL, no trailing slash
    ca_bundle: Path | None = None
    proxy: str | None = None
    timeout_s: float = 10.0  # connect, each read, each write; a dead link is noticed this fast
    wait_s: int = 55  # below the 60 s idle cut-off of common NATs and proxies
    enroll_token_file: Path | None = None
    #: backoff ceiling after the first failure; doubles per failure up to ``retry_max_s``.
    #: 5 s: a blip is retried at once, an outage costs one request per few minutes.
    retry_base_s: float = 5.0
    #: no wait between attempts is longer (unless the server's Retry-After asks for more).
    retry_max_s: float = 300.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where ``edge-agent run`` publishes Prometheus metrics (``edge_agent.metrics``)."""

    textfile: Path | None = None  # rewritten atomically every 10 s (node_exporter textfile)
    listen: tuple[str, int] | None = None  # loopback host and port for GET /metrics


@dataclass(frozen=True, slots=True)
class AgentConfig:
    cluster_id: str
    labels: Mapping[str, str]
    state_dir: Path
    initial_root: Path
    status_snapshot: Path
    drop_folders: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    target: TargetConfig = field(default_factory=TargetConfig)
    sync: SyncConfig | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    timezone: str | None = None  # IANA name; None: the host's local time

    @property
    def identity(self) -> Identity:
        return Identity(self.cluster_id, self.labels)

    @property
    def tzinfo(self) -> dt.tzinfo | None:
        """Site time for maintenance windows (None: the host's local zone)."""
        return zoneinfo.ZoneInfo(self.timezone) if self.timezone else None

    def site_time(self, now: dt.datetime) -> dt.datetime:
        """``now`` as site-local time."""
        return now.astimezone(self.tzinfo)


_TOP_KEYS = {
    "cluster_id",
    "labels",
    "paths",
    "drop_folders",
    "limits",
    "target",
    "sync",
    "metrics",
    "timezone",
}
_METRICS_KEYS = {"textfile", "listen"}
_SYNC_KEYS = {
    "server",
    "ca_bundle",
    "proxy",
    "timeout_s",
    "wait_s",
    "enroll_token_file",
    "retry_base_s",
    "retry_max_s",
}
_TARGET_KEYS = {"kind", "kubeconfig", "folder", "layout"}
_PATH_KEYS = {"state_dir", "initial_root", "status_snapshot"}
_LIMIT_KEYS = {
    "max_bundle_bytes",
    "max_file_bytes",
    "max_manifest_bytes",
    "max_total_manifest_bytes",
    "max_metadata_bytes",
    "max_members",
    "max_future_skew_s",
}


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (the last one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise _DuplicateKey(f"key {key!r} is given twice (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path) -> AgentConfig:
    """Read and check the configuration file at ``path``."""
    where = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config {where}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"config {where}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {where}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = yaml.load(data.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        raise ConfigError(f"config {where}: not valid UTF-8") from None
    except _DuplicateKey as exc:
        raise ConfigError(f"config {where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {where}: not valid YAML{line}") from None
    return parse_config(doc, where=where, base=path.parent)


def parse_config(doc: Any, *, where: str, base: Path) -> AgentConfig:
    """Check a loaded document; relative paths are taken relative to ``base``."""
    if not isinstance(doc, dict):
        raise ConfigError(f"config {where}: expected a mapping at the top level")
    _known(doc, _TOP_KEYS, where, "")
    cluster_id = doc.get("cluster_id")
    if not isinstance(cluster_id, str) or not is_valid_cluster_id(cluster_id):
        raise ConfigError(
            f"config {where}: cluster_id must be a lowercase DNS-style name, got {cluster_id!r}"
        )
    labels = doc.get("labels", {})
    if not isinstance(labels, dict):
        raise ConfigError(f"config {where}: labels must be a mapping of strings")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str) or not is_valid_label(key, value):
            raise ConfigError(
                f"config {where}: label {key!r}: {value!r} is not a valid Kubernetes label"
            )

    paths = _section(doc, "paths", _PATH_KEYS, where)
    state_dir = _path(paths.get("state_dir", "/var/lib/edge-agent"), where, "paths.state_dir", base)
    if "initial_root" not in paths:
        raise ConfigError(
            f"config {where}: paths.initial_root is required (the provisioned trust root)"
        )
    initial_root = _path(paths["initial_root"], where, "paths.initial_root", base)
    snapshot = _path(
        paths.get("status_snapshot", str(state_dir / "status.json")),
        where,
        "paths.status_snapshot",
        base,
    )

    folders = doc.get("drop_folders", [])
    if not isinstance(folders, list) or not all(
        isinstance(f, str) and f.startswith("/") for f in folders
    ):
        raise ConfigError(
            f"config {where}: drop_folders must be a list of absolute paths or glob patterns"
        )

    limits_doc = _section(doc, "limits", _LIMIT_KEYS, where)
    for key, value in limits_doc.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(
                f"config {where}: limits.{key} must be a positive integer, got {value!r}"
            )
    limits = dataclasses.replace(Limits(), **limits_doc)
    for small, large in (
        ("max_file_bytes", "max_bundle_bytes"),
        ("max_metadata_bytes", "max_bundle_bytes"),
        ("max_manifest_bytes", "max_total_manifest_bytes"),
    ):
        if getattr(limits, small) <= getattr(limits, large):
            continue
        if small not in limits_doc:  # a default above a lowered limit follows that limit
            limits = dataclasses.replace(limits, **{small: getattr(limits, large)})
            continue
        raise ConfigError(
            f"config {where}: limits.{small} ({getattr(limits, small)}) is larger than "
            f"limits.{large} ({getattr(limits, large)})"
        )

    target = _target(_section(doc, "target", _TARGET_KEYS, where), where, base)
    sync = _sync(doc["sync"], where, base) if "sync" in doc else None
    metrics = _metrics(_section(doc, "metrics", _METRICS_KEYS, where), where, base)
    timezone = doc.get("timezone")
    if timezone is not None:
        try:
            zoneinfo.ZoneInfo(str(timezone))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"config {where}: timezone {str(timezone)[:64]!r} is not a known IANA time zone"
            ) from None
    return AgentConfig(
        timezone=str(timezone) if timezone is not None else None,
        metrics=metrics,
        cluster_id=cluster_id,
        labels=dict(labels),
        state_dir=state_dir,
        initial_root=initial_root,
        status_snapshot=snapshot,
        drop_folders=tuple(folders),
        limits=limits,
        target=target,
        sync=sync,
    )


def check_server_url(value: Any) -> str:
    """The management server's base URL, or ValueError saying what is wrong with it.

    https, or plain http to loopback only: the agent's credential travels in every request,
    and over plain http anyone on the path could take it. No user, password, query or
    fragment (a secret in a URL ends up in logs).
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be an https URL, got {value!r}")
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"must be an https URL, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user or password (the agent has its own credential)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"plain http is allowed only to {', '.join(LOOPBACK_HOSTS)}; use https for {host}"
        )
    return value.rstrip("/")


def _sync(doc: Any, where: str, base: Path) -> SyncConfig:
    if not isinstance(doc, dict):
        raise ConfigError(f"config {where}: sync must be a mapping")
    _known(doc, _SYNC_KEYS, where, "sync.")
    if "server" not in doc:
        raise ConfigError(f"config {where}: sync.server is required (or leave out sync entirely)")
    try:
        server = check_server_url(doc["server"])
    except ValueError as exc:
        raise ConfigError(f"config {where}: sync.server {exc}") from None
    proxy = doc.get("proxy")
    if proxy is not None and not _is_proxy_url(proxy):
        # The value may hold a proxy password: name the key, never the value.
        raise ConfigError(f"config {where}: sync.proxy must be an http:// or https:// URL")
    timeout_s = doc.get("timeout_s", 10.0)
    if (
        not isinstance(timeout_s, int | float)
        or isinstance(timeout_s, bool)
        or not 0 < timeout_s <= 600
    ):
        raise ConfigError(
            f"config {where}: sync.timeout_s must be a number of seconds in (0, 600], got {timeout_s!r}"
        )
    wait_s = doc.get("wait_s", 55)
    if not isinstance(wait_s, int) or isinstance(wait_s, bool) or not 1 <= wait_s <= MAX_WAIT_S:
        raise ConfigError(
            f"config {where}: sync.wait_s must be whole seconds in [1, {MAX_WAIT_S}], got {wait_s!r}"
        )
    retry = {}
    for key, default in (("retry_base_s", 5.0), ("retry_max_s", 300.0)):
        value = doc.get(key, default)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0.1 <= value <= 86400
        ):
            raise ConfigError(
                f"config {where}: sync.{key} must be a number of seconds in [0.1, 86400], got {value!r}"
            )
        retry[key] = float(value)
    if retry["retry_base_s"] > retry["retry_max_s"]:
        raise ConfigError(f"config {where}: sync.retry_base_s is larger than sync.retry_max_s")
    return SyncConfig(
        server=server,
        retry_base_s=retry["retry_base_s"],
        retry_max_s=retry["retry_max_s"],
        ca_bundle=_path(doc["ca_bundle"], where, "sync.ca_bundle", base)
        if "ca_bundle" in doc
        else None,
        proxy=proxy,
        timeout_s=float(timeout_s),
        wait_s=wait_s,
        enroll_token_file=_path(doc["enroll_token_file"], where, "sync.enroll_token_file", base)
        if "enroll_token_file" in doc
        else None,
    )


def _metrics(doc: Mapping[str, Any], where: str, base: Path) -> MetricsConfig:
    textfile = (
        _path(doc["textfile"], where, "metrics.textfile", base) if "textfile" in doc else None
    )
    listen = None
    if "listen" in doc:
        value = doc["listen"]
        host, _, port = str(value).rpartition(":")
        if host not in LOOPBACK_HOSTS or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"config {where}: metrics.listen must be a loopback HOST:PORT "
                f"({', '.join(LOOPBACK_HOSTS)}), got {value!r}"
            )
        listen = (host, int(port))
    return MetricsConfig(textfile=textfile, listen=listen)


def _is_proxy_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        _port = parts.port  # raises on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _target(doc: Mapping[str, Any], where: str, base: Path) -> TargetConfig:
    kind = doc.get("kind", "auto")
    if kind not in TARGET_KINDS:
        raise ConfigError(
            f"config {where}: target.kind must be one of {', '.join(TARGET_KINDS)}, got {kind!r}"
        )
    layout = doc.get("layout", "flat")
    if layout not in LAYOUTS:
        raise ConfigError(
            f"config {where}: target.layout must be one of {', '.join(LAYOUTS)}, got {layout!r}"
        )
    kubeconfig = (
        _path(doc["kubeconfig"], where, "target.kubeconfig", base) if "kubeconfig" in doc else None
    )
    folder = _path(doc["folder"], where, "target.folder", base) if "folder" in doc else None
    if kind == "manifest-dir" and folder is None:
        raise ConfigError(f"config {where}: target.folder is required for target.kind manifest-dir")
    return TargetConfig(kind=kind, kubeconfig=kubeconfig, folder=folder, layout=layout)


def _section(doc: Mapping[str, Any], name: str, allowed: set[str], where: str) -> dict[str, Any]:
    """An optional mapping section of the config, with only the ``allowed`` keys."""
    section = doc.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config {where}: {name} must be a mapping")
    _known(section, allowed, where, f"{name}.")
    return section


def _known(doc: Mapping[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in allowed)
    if unknown:
        raise ConfigError(
            f"config {where}: unknown key {prefix}{unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )


def _path(value: Any, where: str, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config {where}: {key} must be a path, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else (base / path)
