"""The exception tree of edge-agent, in one place.

    EdgeAgentError                  root; carries ``transient`` (worth retrying as is?)
    ├── ConfigError                 the agent configuration file is missing or wrong
    ├── BundleError                 a bundle was rejected; ``code`` says exactly why
    ├── PolicyObjectError           the verified policy's objects cannot be enforced as a whole
    ├── TargetUnavailableError      the enforcement target cannot be reached now (transient)
    └── StateError                  the local state store cannot be used
        ├── StateCorruptError       the store exists but is damaged or unreadable
        ├── StateSchemaError        the store was written by a newer agent
        ├── StateConflictError      another import committed first (transient: retry)
        └── StateWriteError         a write failed (disk full, permissions, I/O)

Errors are raised by the pure core and by the I/O shell alike and caught only in the
shell and the CLI. Messages are one line, name the object, what was expected and what
was found, and never contain key material, credentials or payload bytes.
"""

from __future__ import annotations

import enum

MAX_MESSAGE_CHARS = 280


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Make a message safe for a log line: control characters escaped, length bounded.

    Messages quote names from untrusted input (member names, key ids, YAML kinds); a
    newline in one must not forge a second log line, and a long one must not flood it.
    """
    safe = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


class EdgeAgentError(Exception):
    """Root of every error edge-agent raises on purpose. Its message is always one line."""

    transient: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class ConfigError(EdgeAgentError):
    """The agent configuration is missing, malformed or has a bad value."""


class BundleErrorCode(enum.Enum):
    """Why a bundle was rejected. Values are stable: scripts and reports use them."""

    SIGNATURE_MISSING = "signature-missing"
    SIGNATURE_INVALID = "signature-invalid"
    THRESHOLD_NOT_MET = "threshold-not-met"
    KEY_UNKNOWN = "key-unknown"
    KEY_REVOKED = "key-revoked"
    DUPLICATE_SIGNATURE = "duplicate-signature"
    WRONG_TYPE = "wrong-document-type"
    ROOT_INVALID = "root-invalid"
    ROOT_CHAIN_BROKEN = "root-chain-broken"
    ROOT_EXPIRED = "root-expired"
    BUNDLE_EXPIRED = "bundle-expired"
    NOT_YET_VALID = "not-yet-valid"
    ROLLBACK = "rollback"
    REVISION_CONFLICT = "revision-conflict"
    WRONG_TARGET = "wrong-target"
    UNSUPPORTED_FORMAT = "unsupported-format"
    METADATA_MALFORMED = "metadata-malformed"
    YAML_INVALID = "yaml-invalid"
    HASH_MISMATCH = "hash-mismatch"
    LENGTH_MISMATCH = "length-mismatch"
    FILE_MISSING = "file-missing"
    FILE_UNLISTED = "file-unlisted"
    FILE_DUPLICATE = "file-duplicate"
    UNSAFE_PATH = "unsafe-path"
    UNSAFE_MEMBER_TYPE = "unsafe-member-type"
    TOO_LARGE = "too-large"
    ARCHIVE_MALFORMED = "archive-malformed"
    ARCHIVE_TRUNCATED = "archive-truncated"
    ARCHIVE_LAYOUT = "archive-layout"
    READ_FAILED = "read-failed"


class BundleError(EdgeAgentError):
    """A bundle was rejected. Nothing from it was, or may be, committed."""

    def __init__(self, code: BundleErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.detail = one_line(message)

    @property
    def retryable(self) -> bool:
        """True when the same file may verify later (a copy still in progress, a read error)."""
        return self.code in (BundleErrorCode.ARCHIVE_TRUNCATED, BundleErrorCode.READ_FAILED)


class PolicyObjectError(EdgeAgentError):
    """The policy's objects cannot be enforced as a whole (permanent: a new policy is needed)."""


class TargetUnavailableError(EdgeAgentError):
    """The cluster API (or manifest folder) cannot be used right now; the cycle is retried."""

    transient = True


class StateError(EdgeAgentError):
    """The local state store cannot be used as asked."""


class StateCorruptError(StateError):
    """The store exists but is damaged; the agent refuses to guess what it held."""


class StateSchemaError(StateError):
    """The store carries a schema version this agent does not know."""


class StateConflictError(StateError):
    """The policy in force changed while a bundle was verified; verify it again."""

    transient = True


class StateWriteError(StateError):
    """A write to the store failed; the previous state is still the one in force."""

    transient = True
