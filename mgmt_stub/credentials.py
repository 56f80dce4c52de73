"""Secrets the stub hands out: bootstrap tokens, agent credentials, operator credentials.

A secret is ``<kind>_<id>_<secret>``: ``kind`` says what it is (``ebt`` bootstrap token,
``eac`` agent credential, ``eop`` operator credential), ``id`` (16 hex) names the stored row,
``secret`` is 32 random bytes in base64url. Only ``sha256(secret)`` is stored: the secret
has 256 bits of entropy, so a fast hash is enough, and a stolen database gives no usable
credential. Comparison is constant-time. Pure apart from ``os.urandom``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["ebt", "eac", "eop"]

_FORMAT = re.compile(r"(ebt|eac|eop)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class Secret:
    kind: Kind
    id: str
    secret: str

    @property
    def text(self) -> str:
        return f"{self.kind}_{self.id}_{self.secret}"

    @property
    def digest(self) -> str:
        return digest(self.secret)


def new_secret(kind: Kind) -> Secret:
    raw = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode("ascii")
    return Secret(kind, os.urandom(8).hex(), raw)


def parse_secret(text: str, kind: Kind) -> Secret | None:
    """The secret in ``text`` if it is well-formed and of ``kind``; None otherwise."""
    match = _FORMAT.fullmatch(text)
    if match is None or match.group(1) != kind:
        return None
    return Secret(kind, match.group(2), match.group(3))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def matches(secret: Secret, stored_digest: str) -> bool:
    return hmac.compare_digest(secret.digest, stored_digest)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        return None
    return token.strip()
