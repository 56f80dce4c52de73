"""``SyncClient``: the agent's requests to the management server, one method per route.

Each method sends one request (docs/management.md, "Agent API") and returns a typed answer
or raises one of the typed errors of ``edge_agent.sync.errors``; it does not retry, sleep,
decide or touch the state store. A downloaded bundle is streamed to a file and handed back
as a path, unverified: the caller gives it to ``importer.verify_and_commit`` like any offline
bundle, so the server's word alone never changes what the cluster runs.

Transport rules, each for a reason:

- one ``httpx.Client``, HTTP/1.1, at most one kept-alive connection: an idle agent costs one
  connection. One request at a time per client: the long poll (``wait``) belongs on a
  ``SyncClient`` of its own.
- every request has a timeout (connect, each read, each write: ``timeout_s``; ``wait`` reads
  for ``wait_s + timeout_s``), so a dead link is an ``Unreachable``, never a hang.
- TLS is verified against ``ca_bundle`` or the system CA store. A proxy is the configured
  one, else ``HTTPS_PROXY``/``ALL_PROXY`` with ``NO_PROXY`` from the environment; a
  loopback server is always reached directly.
- redirects are never followed (the next host would receive the credential); bodies are
  asked for without compression and read with a byte cap; a bundle must match its ETag
  (its SHA-256) or it is discarded.
- the credential (or bootstrap token) travels only in the ``Authorization`` header, is
  never logged, never in a message (any server text quoted is scrubbed of it) and never in
  a ``repr`` of the values returned.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx

from edge_agent.clock import Clock, SystemClock, format_time
from edge_agent.config import LOOPBACK_HOSTS, SyncConfig
from edge_agent.errors import ConfigError, StateWriteError
from edge_agent.sync.errors import Refused, RetryLater, ServerError, SyncError, Unreachable
from edge_agent.sync.retry import parse_http_date, parse_retry_after

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 4 * 1024 * 1024
"""Largest JSON answer read (an action list, an enrollment); more is a ServerError."""
MAX_PROBLEM_BYTES = 64 * 1024
"""Largest error body read for its problem detail; the rest is not read."""
MAX_EVENTS_PER_BATCH = 2000
MAX_EVENTS_BODY_BYTES = 2 * 1024 * 1024
"""The server's limits for one event batch (docs/management.md); the caller splits batches."""
_CHUNK_BYTES = 1 << 16
_SHA256_ETAG = re.compile(r'^"([0-9a-f]{64})"$')
_REDACTED = "[redacted]"


# -- answers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """An agent credential from enrollment or rotation. ``credential`` is the secret."""

    credential_id: str
    credential: str = field(repr=False)

    def to_state(self, server: str, cluster_id: str, issued_at: dt.datetime) -> dict[str, str]:
        """The document ``StateStore.set_sync_credential`` keeps."""
        return {
            "server": server,
            "cluster_id": cluster_id,
            "credential_id": self.credential_id,
            "credential": self.credential,
            "issued_at": format_time(issued_at),
        }


@dataclass(frozen=True, slots=True)
class Unchanged:
    """304: the desired state is still the one with this ETag.

    ``actions`` (here and in the other answers) is the newest action sequence of the cluster
    from ``X-Edge-Actions``, so an idle agent asks for actions only when there are new ones;
    None when the server does not send it.
    """

    etag: str
    actions: int | None = None


@dataclass(frozen=True, slots=True)
class NoneAssigned:
    """204: no desired state is assigned to this cluster (nothing to do, nothing to remove)."""

    actions: int | None = None


@dataclass(frozen=True, slots=True)
class Bundle:
    """200: a new desired state, downloaded whole to ``path`` (owned by the caller now).

    Unverified: only ``verify_and_commit`` decides whether it becomes the policy in force.
    ``etag`` is the header as sent (quoted), to give back to ``desired`` and ``wait``.
    """

    path: Path
    etag: str
    revision: int
    size: int
    sha256: str
    actions: int | None = None


Desired = Unchanged | NoneAssigned | Bundle


class EventsAccepted(NamedTuple):
    accepted: int  # recorded now
    duplicates: int  # already recorded before (a re-sent batch): delivered all the same


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    seq: int
    type: str
    params: Mapping[str, Any]
    created_at: str


@dataclass(frozen=True, slots=True)
class Changed:
    """The long poll saw a change: the current desired ETag (None: nothing assigned) and the
    newest action sequence."""

    etag: str | None
    actions: int


# -- the client ------------------------------------------------------------------------------


class SyncClient:
    """The agent API of one management server. Use as a context manager."""

    def __init__(
        self,
        server: str,
        *,
        credential: str | None = None,
        ca_bundle: Path | None = None,
        proxy: str | None = None,
        timeout_s: float = 10.0,
        wait_s: int = 55,
        clock: Clock | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        #: the server's clock from the ``Date`` header of its newest answer, and our clock
        #: when it arrived (the sync engine derives the clock skew from the pair).
        self.server_time: tuple[dt.datetime, dt.datetime] | None = None
        self.timeout_s = timeout_s
        self.wait_s = wait_s
        self._credential = credential
        self._clock = clock or SystemClock()
        try:
            context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"sync.ca_bundle {ca_bundle}: cannot load CA certificates: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None
        loopback = urlsplit(self.server).hostname in LOOPBACK_HOSTS
        self._http = httpx.Client(
            base_url=self.server,
            headers={"Accept-Encoding": "identity", "User-Agent": "edge-agent"},
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            verify=context,
            proxy=None if loopback else proxy,
            trust_env=not loopback and proxy is None,
            follow_redirects=False,
            http1=True,
            http2=False,
        )

    @classmethod
    def from_config(
        cls, config: SyncConfig, *, credential: str | None = None, clock: Clock | None = None
    ) -> SyncClient:
        return cls(
            config.server,
            credential=credential,
            ca_bundle=config.ca_bundle,
            proxy=config.proxy,
            timeout_s=config.timeout_s,
            wait_s=config.wait_s,
            clock=clock,
        )

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def use_credential(self, credential: str) -> None:
        """Send ``credential`` from the next request on (after a rotation was stored)."""
        self._credential = credential

    # -- the agent API -------------------------------------------------------------------

    def enroll(
        self,
        token: str,
        cluster_id: str,
        labels: Mapping[str, str],
        agent_key: str | None = None,
    ) -> Credential:
        """Spend one use of a bootstrap token; the cluster's own credential (201)."""
        body: dict[str, Any] = {"cluster_id": cluster_id, "labels": dict(labels)}
        if agent_key is not None:
            body["agent_key"] = agent_key
        where = self._where("POST", "/v1/enroll")
        answer = self._json("POST", "/v1/enroll", secret=token, json_body=body, expect=(201,))
        if answer.get("cluster_id") != cluster_id:
            raise ServerError(f"{where}: the answer is for another cluster id", status=201)
        return Credential(_text(answer, "credential_id", where), _text(answer, "credential", where))

    def desired(self, etag: str | None, *, folder: Path, max_bytes: int) -> Desired:
        """The desired state: ``Unchanged`` (304), ``NoneAssigned`` (204) or a ``Bundle``
        streamed to a new file in ``folder`` (at most ``max_bytes``; checked against its
        ETag). On any failure no file is left behind."""
        path = "/v1/agent/desired"
        where = self._where("GET", path)
        headers = {"Accept": "application/vnd.edge-agent.bundle"}
        if etag:
            headers["If-None-Match"] = etag
        with self._exchange("GET", path, headers=headers) as response:
            seq_text = response.headers.get("x-edge-actions", "")
            actions = int(seq_text) if seq_text.isascii() and seq_text.isdigit() else None
            if response.status_code in (204, 304):
                _read_bounded(response, MAX_PROBLEM_BYTES, where)  # empty: keeps the connection
                if response.status_code == 304:
                    sent = response.headers.get("etag", "")
                    return Unchanged(sent if _SHA256_ETAG.match(sent) else etag or "", actions)
                return NoneAssigned(actions)
            if response.status_code != 200:
                raise ServerError(
                    f"{where}: unexpected HTTP {response.status_code}",
                    status=response.status_code,
                )
            new_etag = response.headers.get("etag", "")
            digest_match = _SHA256_ETAG.match(new_etag)
            revision = response.headers.get("x-edge-revision", "")
            if digest_match is None or not (revision.isascii() and revision.isdigit()):
                raise ServerError(
                    f"{where}: the bundle comes without a SHA-256 ETag or a revision",
                    status=200,
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ServerError(
                    f"{where}: the bundle is {declared} bytes, the limit is {max_bytes}",
                    status=200,
                )
            file_path, size, sha256 = self._download(response, where, folder, max_bytes)
        if sha256 != digest_match.group(1):
            file_path.unlink(missing_ok=True)
            raise Unreachable(
                f"{where}: the bundle received ({size} bytes) does not match its ETag; discarded"
            )
        return Bundle(file_path, new_etag, int(revision), size, sha256, actions)

    def post_events(self, events: Sequence[Mapping[str, Any]]) -> EventsAccepted:
        """Deliver one batch (idempotent by event id on the server)."""
        return self.post_encoded_events([json.dumps(e, separators=(",", ":")) for e in events])

    def post_encoded_events(self, events: Sequence[str]) -> EventsAccepted:
        """``post_events`` for events already encoded as JSON objects (the outbox keeps them
        so): sent as they are, not decoded and encoded again."""
        if len(events) > MAX_EVENTS_PER_BATCH:
            raise ValueError(f"{len(events)} events in one batch; at most {MAX_EVENTS_PER_BATCH}")
        body = ('{"events":[' + ",".join(events) + "]}").encode()
        if len(body) > MAX_EVENTS_BODY_BYTES:
            raise ValueError(f"event batch is {len(body)} bytes; at most {MAX_EVENTS_BODY_BYTES}")
        path = "/v1/agent/events"
        answer = self._json("POST", path, content=body, expect=(200,))
        where = self._where("POST", path)
        result = EventsAccepted(
            _count(answer, "accepted", where), _count(answer, "duplicates", where)
        )
        if result.accepted + result.duplicates != len(events):
            # Acknowledging on such an answer could lose events: keep them, send them again.
            raise ServerError(
                f"{where}: the answer counts {result.accepted + result.duplicates} events "
                f"of {len(events)} sent",
                status=200,
            )
        return result

    def actions(self) -> list[Action]:
        """Actions pending for this cluster, oldest first."""
        path = "/v1/agent/actions"
        where = self._where("GET", path)
        answer = self._json("GET", path, expect=(200,))
        items = answer.get("actions")
        if not isinstance(items, list):
            raise ServerError(f"{where}: the answer has no action list", status=200)
        try:
            return [
                Action(
                    id=str(item["id"]),
                    seq=int(item["seq"]),
                    type=str(item["type"]),
                    params=dict(item.get("params") or {}),
                    created_at=str(item["created_at"]),
                )
                for item in items
            ]
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ServerError(
                f"{where}: an action in the answer is malformed", status=200
            ) from None

    def wait(self, etag: str | None, actions_seq: int) -> Changed | None:
        """Long poll: what changed since (``etag``, ``actions_seq``), or None after ``wait_s``."""
        path = "/v1/agent/wait"
        where = self._where("GET", path)
        params: dict[str, str | int] = {"actions": actions_seq, "timeout": self.wait_s}
        if etag:
            params["etag"] = etag
        timeout = httpx.Timeout(self.timeout_s, read=self.wait_s + self.timeout_s)
        answer = self._json("GET", path, params=params, timeout=timeout, expect=(200, 204))
        if answer is None:
            return None
        current = answer.get("etag")
        if answer.get("changed") is not True or not (current is None or isinstance(current, str)):
            raise ServerError(f"{where}: the answer is not a change notice", status=200)
        return Changed(current, _count(answer, "actions", where))

    def rotate_credential(self) -> Credential:
        """A new credential. The one in use keeps working until the new one is first used:
        store the new one first, then ``use_credential`` it."""
        path = "/v1/agent/credential"
        where = self._where("POST", path)
        answer = self._json("POST", path, expect=(201,))
        return Credential(_text(answer, "credential_id", where), _text(answer, "credential", where))

    # -- transport -----------------------------------------------------------------------

    def _where(self, method: str, path: str) -> str:
        return f"server {self.server}: {method} {path}"

    def _json(
        self,
        method: str,
        path: str,
        *,
        secret: str | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: httpx.Timeout | None = None,
        expect: tuple[int, ...],
    ) -> Any:
        """One request with a JSON answer (None for 204), bounded to MAX_JSON_BYTES."""
        where = self._where(method, path)
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        with self._exchange(
            method,
            path,
            secret=secret,
            content=content,
            params=params,
            headers=headers,
            timeout=timeout,
        ) as response:
            if response.status_code not in expect:
                raise ServerError(
                    f"{where}: unexpected HTTP {response.status_code}",
                    status=response.status_code,
                )
            if response.status_code == 204:
                _read_bounded(response, MAX_PROBLEM_BYTES, where)  # empty: keeps the connection
                return None
            raw = _read_bounded(response, MAX_JSON_BYTES, where)
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            raise ServerError(
                f"{where}: the answer is not JSON", status=response.status_code
            ) from None
        if not isinstance(answer, dict):
            raise ServerError(f"{where}: the answer is not a JSON object", status=200)
        return answer

    @contextlib.contextmanager
    def _exchange(
        self,
        method: str,
        path: str,
        *,
        secret: str | None = None,
        content: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> Iterator[httpx.Response]:
        """Send one request and yield its streamed response once its status is a success.

        Every transport failure, during the request or while the body is read in the
        ``with`` block, becomes ``Unreachable``; error statuses become their typed errors.
        Any message raised is scrubbed of the secret used.
        """
        where = self._where(method, path)
        token = secret if secret is not None else self._credential
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        request = self._http.build_request(
            method,
            path,
            content=content,
            params=params,
            headers=all_headers,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        secrets = tuple(s for s in (token, self._credential) if s)

        def scrub(text: str) -> str:
            for secret_text in secrets:
                text = text.replace(secret_text, _REDACTED)
            return text

        started = time.monotonic()
        try:
            try:
                response = self._http.send(request, stream=True)
                server_date = parse_http_date(response.headers.get("date"))
                if server_date is not None:
                    self.server_time = (server_date, self._clock.now())
                try:
                    _raise_for_status(response, where, self._clock, scrub)
                    yield response
                finally:
                    response.close()
            except httpx.TimeoutException:
                raise Unreachable(f"{where}: no answer within the timeout") from None
            except httpx.ConnectError as exc:
                raise Unreachable(f"{where}: cannot connect ({scrub(_reason(exc))})") from None
            except httpx.TransportError as exc:
                raise Unreachable(
                    f"{where}: connection failed ({type(exc).__name__}: {scrub(_reason(exc))})"
                ) from None
            except (ValueError, OverflowError, RecursionError) as exc:
                # A header or body no parser can take (a 5,000-digit number, a year 10**9):
                # a server answering outside the protocol, never a crash.
                raise ServerError(
                    f"{where}: the answer is malformed ({type(exc).__name__})", status=0
                ) from None
        except SyncError as exc:
            log.debug("%s failed after %.3f s: %s", where, time.monotonic() - started, exc)
            raise
        log.debug("%s: HTTP %d in %.3f s", where, response.status_code, time.monotonic() - started)

    def _download(
        self, response: httpx.Response, where: str, folder: Path, max_bytes: int
    ) -> tuple[Path, int, str]:
        """Stream the body to ``folder/desired-*.part``; renamed to ``.bundle`` when whole."""
        try:
            fd, name = tempfile.mkstemp(
                prefix=f"desired-{os.getpid()}-", suffix=".part", dir=folder
            )
        except OSError as exc:
            raise StateWriteError(
                f"{where}: cannot write to {folder}: {exc.strerror or exc}"
            ) from None
        part = Path(name)
        done = False
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as handle:
                for chunk in response.iter_raw(_CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ServerError(
                            f"{where}: the bundle is larger than the limit of {max_bytes} bytes",
                            status=200,
                        )
                    digest.update(chunk)
                    handle.write(chunk)
            final = part.with_suffix(".bundle")
            os.replace(part, final)
            done = True
            return final, size, digest.hexdigest()
        except OSError as exc:
            raise StateWriteError(
                f"{where}: cannot write to {folder}: {exc.strerror or exc}"
            ) from None
        finally:
            if not done:
                part.unlink(missing_ok=True)


# -- answers to errors -----------------------------------------------------------------------


def _raise_for_status(
    response: httpx.Response, where: str, clock: Clock, scrub: Callable[[str], str]
) -> None:
    status = response.status_code
    if status < 300 or status == 304:
        return
    if status < 400:
        raise Refused(
            f"{where}: redirected (HTTP {status}); redirects are not followed",
            status=status,
            kind="redirect",
            detail="redirect not followed",
        )
    kind, detail = _problem(response)
    kind, detail = scrub(kind), scrub(detail)  # the server's text is quoted: never a secret
    said = (
        f"{where}: HTTP {status}" + (f" {kind}" if kind else "") + (f": {detail}" if detail else "")
    )
    if status == 429 or (status == 503 and "retry-after" in response.headers):
        now = parse_http_date(response.headers.get("date")) or clock.now()
        retry_after_s = parse_retry_after(response.headers.get("retry-after"), now=now)
        if status == 429 or retry_after_s is not None:
            after = f" (retry after {retry_after_s:.0f} s)" if retry_after_s is not None else ""
            raise RetryLater(said + after, status=status, retry_after_s=retry_after_s)
    if status >= 500:
        raise ServerError(said, status=status)
    raise Refused(said, status=status, kind=kind, detail=detail)


def _problem(response: httpx.Response) -> tuple[str, str]:
    """(kind, detail) of an RFC 9457 problem answer; empty strings when there is none."""
    try:
        raw = _read_bounded(response, MAX_PROBLEM_BYTES, "")
        doc = json.loads(raw)
    except (ServerError, ValueError):
        return "", ""
    if not isinstance(doc, dict):
        return "", ""
    kind = doc.get("type")
    detail = doc.get("detail")
    kind_text = kind.rsplit(":", 1)[-1] if isinstance(kind, str) else ""
    return kind_text[:64], detail if isinstance(detail, str) else ""


def _read_bounded(response: httpx.Response, limit: int, where: str) -> bytes:
    body = bytearray()
    for chunk in response.iter_raw(_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            raise ServerError(f"{where}: the answer is larger than {limit} bytes", status=0)
    return bytes(body)


def _text(answer: Mapping[str, Any], key: str, where: str) -> str:
    value = answer.get(key)
    if not isinstance(value, str) or not value:
        raise ServerError(f"{where}: the answer has no {key}", status=0)
    return value


def _count(answer: Mapping[str, Any], key: str, where: str) -> int:
    value = answer.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ServerError(f"{where}: the answer has no count {key}", status=0)
    return value


def _reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause or exc) or type(exc).__name__
    return text
