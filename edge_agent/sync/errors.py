"""The sync exception tree: why a request to the management server did not give an answer.

    EdgeAgentError
    └── SyncError               any failed request to the management server
        ├── Unreachable         no complete answer: refused, DNS, TLS, timeout, reset, a body
        │                       cut short or not matching its ETag (transient)
        ├── ServerError         the server failed (5xx) or answered outside the protocol
        │                       (bad JSON, a bundle over the size cap) (transient)
        ├── RetryLater          429, or 503 with Retry-After: ``retry_after_s`` (transient)
        └── Refused             a 4xx (or a redirect, never followed): ``status`` and the
                                problem ``detail`` (permanent until someone changes
                                something: a revoked credential is 401)

Split by what the caller does next: the transient three are retried on a backoff
(``edge_agent.sync.retry``); ``Refused`` needs a person or a new enrollment. Messages are one
line and name the server and the request; they never contain the credential, the bootstrap
token or a payload (the client removes either secret from any text it quotes).
"""

from __future__ import annotations

from edge_agent.errors import EdgeAgentError


class SyncError(EdgeAgentError):
    """A request to the management server failed; nothing was changed locally."""


class Unreachable(SyncError):
    """No complete answer arrived (connect, TLS, timeout, reset, truncated body)."""

    transient = True


class ServerError(SyncError):
    """The server failed (5xx) or its answer breaks the protocol."""

    transient = True

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RetryLater(SyncError):
    """The server asked to be left alone for a while (429, or 503 with Retry-After).

    ``retry_after_s`` is None when a 429 came without a usable Retry-After header.
    """

    transient = True

    def __init__(self, message: str, *, status: int, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class Refused(SyncError):
    """The server refused the request (4xx); the same request will be refused again."""

    def __init__(self, message: str, *, status: int, kind: str, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind  # the problem type's last part, e.g. "unauthenticated"
        self.detail = detail
