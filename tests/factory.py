"""Real signed bundles, made in memory, for tests.

Everything here is real: Ed25519 keys, DSSE envelopes signed over the exact payload bytes,
canonical JSON, and tar bytes laid out block by block. Nothing is patched and nothing
touches the disk. Tests reach for it in three layers:

* ``Authority`` is the management side in memory: root and policy keys, the chain of root
  versions (``rotate``), the ``TrustState`` a freshly provisioned site holds, and signing
  of any payload by any list of keys, so tests can also forge.
* ``metadata_document`` / ``metadata_payload`` describe a bundle (a plain dict to tamper
  with, or its canonical bytes); ``bundle_archive`` lays out roots, ``bundle.json`` and the
  payload files the way the format requires; ``good_bundle`` does all of it for cluster
  ``site-1`` with two layers and one small artifact.
* ``TarMember`` / ``write_tar`` write an archive from an explicit member list: any type
  flag, link name, pax records, raw header bytes, a wrong checksum or magic, missing end
  blocks, trailing bytes. That is what hostile-archive tests are made of.

Keys are derived from fixed seeds, so every run builds byte-identical keys and roots and
a failing example can be replayed. Times are fixed too: ``REFERENCE_TIME`` is "now".

What this module does not do: verify anything (tests call ``verify_bundle`` themselves)
or decide what a bad bundle is (``tests/adversarial.py`` does).
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from edge_agent.bundle import canonical
from edge_agent.bundle.envelope import (
    BUNDLE_PAYLOAD_TYPE,
    ROOT_PAYLOAD_TYPE,
    Signature,
    encode_envelope,
    keyid_for,
    parse_envelope,
)
from edge_agent.bundle.model import BUNDLE_TYPE, FORMAT_VERSION
from edge_agent.bundle.trust import TrustState, advance_root, load_initial_root
from edge_agent.bundle.verify import Identity
from edge_agent.clock import UTC, format_time
from mgmt_stub.keys import SigningKey, public_raw, root_payload, sign_envelope

#: "Now" for every test that does not say otherwise.
REFERENCE_TIME = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
#: The good bundle is issued an hour before ``REFERENCE_TIME`` and valid for 30 days.
ISSUED_AT = REFERENCE_TIME - dt.timedelta(hours=1)
BUNDLE_LIFETIME = dt.timedelta(days=30)
#: Roots outlive every bundle in the tests unless a test says otherwise.
ROOT_EXPIRES_AT = REFERENCE_TIME + dt.timedelta(days=365)

CLUSTER_ID = "site-1"
SITE_LABELS: Mapping[str, str] = {"region": "north", "tier": "edge"}
IDENTITY = Identity(CLUSTER_ID, SITE_LABELS)

MAX_DOCUMENT_BYTES = 1 << 20  # what the tests pass as max_bytes when loading roots

# --------------------------------------------------------------------------------------
# Payload of the good bundle: two layers and one small artifact.
# --------------------------------------------------------------------------------------

NAMESPACE_PATH = "layers/base/namespace.yaml"
APP_PATH = "layers/app/app.yaml"
ARTIFACT_PATH = "artifacts/motd.txt"

NAMESPACE_YAML = b"""\
apiVersion: v1
kind: Namespace
metadata:
  name: hello-web
"""

APP_YAML = b"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: hello-web-content
  namespace: hello-web
data:
  index.html: "<h1>Hello from the edge</h1>"
---
apiVersion: v1
kind: Service
metadata:
  name: hello-web
  namespace: hello-web
spec:
  ports:
    - {name: http, port: 80, targetPort: 8080}
"""

ARTIFACT_BYTES = b"Welcome to site-1. This file is an artifact.\n"

#: path below ``payload/`` -> bytes, in archive order.
GOOD_FILES: Mapping[str, bytes] = {
    NAMESPACE_PATH: NAMESPACE_YAML,
    APP_PATH: APP_YAML,
    ARTIFACT_PATH: ARTIFACT_BYTES,
}
GOOD_LAYERS: Sequence[tuple[str, Sequence[str]]] = (
    ("base", (NAMESPACE_PATH,)),
    ("app", (APP_PATH,)),
)
GOOD_ARTIFACTS: Sequence[tuple[str, str]] = ((ARTIFACT_PATH, "file"),)
GOOD_SETTINGS: Mapping[str, Any] = {
    "mode": "enforce",
    "reconcile_interval_s": 60,
    "sync_interval_s": 300,
}

# --------------------------------------------------------------------------------------
# Keys, roots and the trust a site holds
# --------------------------------------------------------------------------------------


def key_from_seed(label: str) -> SigningKey:
    """A deterministic Ed25519 key: the same label gives the same key in every run."""
    private = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SigningKey(keyid_for(public), private)


def sign(payload_type: str, payload: bytes, signers: Iterable[SigningKey]) -> bytes:
    """An envelope over ``payload`` with one real signature per signer, in order.

    Nothing is checked: any type, any keys, the same key twice, or no key at all.
    """
    return sign_envelope(payload_type, payload, list(signers))


def envelope_with(payload_type: str, payload: bytes, signatures: Iterable[Signature]) -> bytes:
    """An envelope with exactly these (possibly forged) signatures."""
    return encode_envelope(payload_type, payload, list(signatures))


def reencode(
    envelope: bytes,
    *,
    payload: bytes | None = None,
    signatures: Iterable[Signature] | None = None,
    payload_type: str | None = None,
) -> bytes:
    """Re-encode an envelope with some parts replaced (no re-signing) and the rest kept."""
    parsed = parse_envelope(envelope, what="test envelope", max_bytes=MAX_DOCUMENT_BYTES)
    return encode_envelope(
        parsed.payload_type if payload_type is None else payload_type,
        parsed.payload if payload is None else payload,
        parsed.signatures if signatures is None else list(signatures),
    )


def signatures_of(envelope: bytes) -> tuple[Signature, ...]:
    return parse_envelope(envelope, what="test envelope", max_bytes=MAX_DOCUMENT_BYTES).signatures


def payload_of(envelope: bytes) -> bytes:
    return parse_envelope(envelope, what="test envelope", max_bytes=MAX_DOCUMENT_BYTES).payload


@dataclass(frozen=True, slots=True)
class RootVersion:
    """One root version as the management side keeps it: its keys and its signed envelope."""

    version: int
    root_keys: tuple[SigningKey, ...]
    root_threshold: int
    policy_keys: tuple[SigningKey, ...]
    policy_threshold: int
    expires_at: dt.datetime
    payload: bytes
    envelope: bytes


class Authority:
    """The management side in memory: the root chain and the keys that sign for it.

    ``Authority()`` holds root version 1 with one root key and one policy key (threshold
    1 each); ``rotate`` appends version 2, 3, ... Keys come from ``key_from_seed`` with the
    authority's ``name`` in the label, so two authorities with different names never share
    a key, and the same name always gives the same keys.
    """

    def __init__(
        self,
        name: str = "mgmt",
        *,
        root_keys: int = 1,
        root_threshold: int = 1,
        policy_keys: int = 1,
        policy_threshold: int = 1,
        expires_at: dt.datetime = ROOT_EXPIRES_AT,
    ) -> None:
        self.name = name
        self.minted: list[SigningKey] = []
        roots = tuple(self.new_key("root") for _ in range(root_keys))
        policies = tuple(self.new_key("policy") for _ in range(policy_keys))
        self.roots: list[RootVersion] = []
        self.roots.append(
            self.make_root(
                version=1,
                root_keys=roots,
                root_threshold=root_threshold,
                policy_keys=policies,
                policy_threshold=policy_threshold,
                expires_at=expires_at,
                signers=roots,
            )
        )

    # -- keys ----------------------------------------------------------------------------
    def new_key(self, role: str = "key") -> SigningKey:
        """A fresh key of this authority (deterministic: the n-th key minted is always the same)."""
        key = key_from_seed(f"{self.name}/{role}/{len(self.minted) + 1}")
        self.minted.append(key)
        return key

    @property
    def current(self) -> RootVersion:
        """The newest root version."""
        return self.roots[-1]

    @property
    def initial_root(self) -> bytes:
        """The root v1 envelope: what a site is provisioned with (its ``root.json``)."""
        return self.roots[0].envelope

    @property
    def policy_key(self) -> SigningKey:
        """The first policy key of the newest root."""
        return self.current.policy_keys[0]

    @property
    def root_key(self) -> SigningKey:
        """The first root key of the newest root."""
        return self.current.root_keys[0]

    def policy_signers(self) -> tuple[SigningKey, ...]:
        """Exactly a threshold of the newest root's policy keys."""
        return self.current.policy_keys[: self.current.policy_threshold]

    # -- roots ---------------------------------------------------------------------------
    @staticmethod
    def make_root(
        *,
        version: int,
        root_keys: Sequence[SigningKey],
        policy_keys: Sequence[SigningKey],
        signers: Iterable[SigningKey],
        root_threshold: int = 1,
        policy_threshold: int = 1,
        expires_at: dt.datetime = ROOT_EXPIRES_AT,
    ) -> RootVersion:
        """A root version signed by exactly ``signers`` (not appended to any chain)."""
        payload = root_payload(
            version=version,
            expires_at=expires_at,
            root_keys=root_keys,
            root_threshold=root_threshold,
            policy_keys=policy_keys,
            policy_threshold=policy_threshold,
        )
        return RootVersion(
            version=version,
            root_keys=tuple(root_keys),
            root_threshold=root_threshold,
            policy_keys=tuple(policy_keys),
            policy_threshold=policy_threshold,
            expires_at=expires_at,
            payload=payload,
            envelope=sign(ROOT_PAYLOAD_TYPE, payload, signers),
        )

    def next_root(
        self,
        *,
        new_root_key: bool = True,
        drop_policy: Iterable[SigningKey] = (),
        add_policy: int = 0,
        policy_threshold: int | None = None,
        expires_at: dt.datetime = ROOT_EXPIRES_AT,
        version: int | None = None,
        signed_by_old: bool = True,
        signed_by_new: bool = True,
        extra_signers: Iterable[SigningKey] = (),
    ) -> RootVersion:
        """The next root version, NOT appended (use ``rotate`` for that).

        By default the root key is replaced by a new one (so the chain really has to be
        followed) and the envelope is signed by a threshold of the old root keys and by the
        new ones, as the rotation rule requires. ``drop_policy`` removes policy keys (the
        site then treats them as revoked). ``version``, ``signed_by_old``,
        ``signed_by_new`` and ``extra_signers`` let a test forge a broken link.
        """
        old = self.current
        roots = (self.new_key("root"),) if new_root_key else old.root_keys
        dropped = {k.keyid for k in drop_policy}
        policies = tuple(k for k in old.policy_keys if k.keyid not in dropped)
        policies += tuple(self.new_key("policy") for _ in range(add_policy))
        signers: dict[str, SigningKey] = {}
        if signed_by_old:
            signers.update((k.keyid, k) for k in old.root_keys[: old.root_threshold])
        if signed_by_new:
            signers.update((k.keyid, k) for k in roots)
        signers.update((k.keyid, k) for k in extra_signers)
        return self.make_root(
            version=old.version + 1 if version is None else version,
            root_keys=roots,
            root_threshold=1,
            policy_keys=policies,
            policy_threshold=policy_threshold or min(old.policy_threshold, len(policies)),
            expires_at=expires_at,
            signers=signers.values(),
        )

    def rotate(self, **kwargs: Any) -> RootVersion:
        """Append the next root version (see ``next_root`` for the arguments) and return it."""
        root = self.next_root(**kwargs)
        self.roots.append(root)
        return root

    def root_members(self, *, after: int = 1) -> list[tuple[str, bytes]]:
        """``roots/N.json`` archive members for every version newer than ``after``."""
        return [(f"roots/{r.version}.json", r.envelope) for r in self.roots if r.version > after]

    # -- the site's side -----------------------------------------------------------------
    def trust_state(
        self,
        *,
        at_version: int = 1,
        revision: int | None = None,
        digest: str | None = None,
        time_high_water: dt.datetime | None = None,
    ) -> TrustState:
        """What a site provisioned with root v1 holds after following the chain to ``at_version``.

        ``revision``/``digest`` are the policy in force and ``time_high_water`` the newest
        issued-at the site has accepted; ``None`` means a fresh site.
        """
        state = TrustState(
            root=load_initial_root(self.initial_root, max_bytes=MAX_DOCUMENT_BYTES),
            revoked_keyids=frozenset(),
            time_high_water=None,
            revision=None,
            digest=None,
        )
        for root in self.roots[1:at_version]:
            state = advance_root(
                state, root.envelope, claimed_version=root.version, max_bytes=MAX_DOCUMENT_BYTES
            )
        return replace(state, time_high_water=time_high_water, revision=revision, digest=digest)

    def key_material(self) -> tuple[str, ...]:
        """Encodings of every key this authority minted, for "no secrets in messages" checks."""
        material = []
        for key in self.minted:
            private = key.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            for raw in (public_raw(key), private):
                material += [raw.hex(), base64.b64encode(raw).decode()]
        return tuple(material)

    # -- bundles -------------------------------------------------------------------------
    def sign_bundle(
        self,
        payload: bytes,
        signers: Iterable[SigningKey] | None = None,
        *,
        payload_type: str = BUNDLE_PAYLOAD_TYPE,
    ) -> bytes:
        """A ``bundle.json`` envelope; by default signed by a threshold of current policy keys."""
        return sign(payload_type, payload, self.policy_signers() if signers is None else signers)


# --------------------------------------------------------------------------------------
# Bundle metadata
# --------------------------------------------------------------------------------------


def file_entry(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}


def metadata_document(
    *,
    revision: int = 1,
    issued_at: dt.datetime = ISSUED_AT,
    expires_at: dt.datetime | None = None,
    target: Mapping[str, Any] | None = None,
    files: Mapping[str, bytes] = GOOD_FILES,
    layers: Sequence[tuple[str, Sequence[str]]] = GOOD_LAYERS,
    artifacts: Sequence[tuple[str, str]] = GOOD_ARTIFACTS,
    settings: Mapping[str, Any] = GOOD_SETTINGS,
    bundle_id: str | None = None,
) -> dict[str, Any]:
    """The metadata of a bundle as a plain dict, ready to tamper with or to encode."""
    return {
        "_type": BUNDLE_TYPE,
        "format_version": FORMAT_VERSION,
        "bundle_id": bundle_id or f"hello-web-r{revision}",
        "target": dict(target or {"cluster_id": CLUSTER_ID}),
        "revision": revision,
        "issued_at": format_time(issued_at),
        "expires_at": format_time(expires_at or issued_at + BUNDLE_LIFETIME),
        "settings": dict(settings),
        "layers": [{"name": name, "manifests": list(paths)} for name, paths in layers],
        "artifacts": [{"path": path, "kind": kind} for path, kind in artifacts],
        "files": {path: file_entry(data) for path, data in files.items()},
    }


def metadata_payload(**kwargs: Any) -> bytes:
    """Canonical bytes of ``metadata_document(**kwargs)``."""
    return canonical.encode(metadata_document(**kwargs))


# --------------------------------------------------------------------------------------
# Tar writing
# --------------------------------------------------------------------------------------

BLOCK = 512
USTAR_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"

REGULAR = b"0"
HARD_LINK = b"1"
SYMLINK = b"2"
CHAR_DEVICE = b"3"
BLOCK_DEVICE = b"4"
DIRECTORY = b"5"
FIFO = b"6"
CONTIGUOUS = b"7"
PAX_HEADER = b"x"
PAX_GLOBAL = b"g"
GNU_LONG_NAME = b"L"
GNU_LONG_LINK = b"K"
GNU_SPARSE = b"S"


@dataclass(frozen=True, slots=True)
class TarMember:
    """One header (and its data) exactly as it will be written.

    ``size`` overrides the size field (default: ``len(data)``); the data written is always
    ``data`` itself, padded to a block, so a size larger than the data desynchronises the
    archive on purpose. ``header_patch`` maps header offsets to bytes written over the
    finished header; the checksum is computed after patching unless ``checksum`` is given.
    """

    name: str
    data: bytes = b""
    typeflag: bytes = REGULAR
    linkname: str = ""
    size: int | None = None
    mode: int = 0o644
    prefix: str = ""
    magic: bytes = USTAR_MAGIC
    header_patch: Mapping[int, bytes] = field(default_factory=dict)
    checksum: int | None = None
    pad: bool = True


def regular(name: str, data: bytes) -> TarMember:
    return TarMember(name, data)


def file_members(name: str, data: bytes) -> list[TarMember]:
    """A regular file as a writer following POSIX does it: a pax ``path`` record if the
    name does not fit the 100-byte ustar field, else the bare header."""
    if len(name.encode("utf-8")) <= 100:
        return [regular(name, data)]
    return [pax_header({"path": name}), regular("PaxHeaders/long-name", data)]


def pax_records(records: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """Encode pax extended-header records ``"<len> key=value\\n"`` with correct lengths."""
    items = records.items() if isinstance(records, Mapping) else records
    out = b""
    for key, value in items:
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        out += str(length).encode() + body
    return out


def pax_header(
    records: Mapping[str, str] | Iterable[tuple[str, str]], *, typeflag: bytes = PAX_HEADER
) -> TarMember:
    """A pax extended header (``x``, or ``g`` for a global one) carrying ``records``."""
    return TarMember("PaxHeaders/member", pax_records(records), typeflag=typeflag)


def gnu_long_name(name: str) -> TarMember:
    """A GNU ``L`` header carrying a long name for the member that follows."""
    return TarMember("././@LongLink", name.encode() + b"\x00", typeflag=GNU_LONG_NAME)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def tar_header(member: TarMember) -> bytes:
    name = member.name.encode("utf-8")
    if len(name) > 100:
        raise ValueError(f"name of {len(name)} bytes: use prefix=, pax_header or gnu_long_name")
    header = bytearray(BLOCK)
    header[0 : len(name)] = name
    header[100:108] = _octal(member.mode, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _octal(len(member.data) if member.size is None else member.size, 12)
    header[136:148] = _octal(int(REFERENCE_TIME.timestamp()), 12)
    header[148:156] = b" " * 8
    header[156:157] = member.typeflag
    link = member.linkname.encode("utf-8")
    header[157 : 157 + len(link)] = link
    header[257 : 257 + len(member.magic)] = member.magic
    prefix = member.prefix.encode("utf-8")
    header[345 : 345 + len(prefix)] = prefix
    for offset, patch in member.header_patch.items():
        header[offset : offset + len(patch)] = patch
    checksum = sum(header) if member.checksum is None else member.checksum
    header[148:156] = b"%06o\x00 " % checksum
    return bytes(header)


def write_tar(
    members: Iterable[TarMember],
    *,
    end_blocks: int = 2,
    trailer: bytes = b"",
    compress: bool = False,
) -> bytes:
    """An archive of exactly these members, then ``end_blocks`` zero blocks, then ``trailer``."""
    out = bytearray()
    for member in members:
        out += tar_header(member)
        out += member.data
        if member.pad:
            out += bytes(-len(member.data) % BLOCK)
    out += bytes(BLOCK * end_blocks)
    out += trailer
    return gzip.compress(bytes(out), mtime=0) if compress else bytes(out)


def gzip_bomb(archive: bytes, *, inflated_bytes: int) -> bytes:
    """``archive`` followed by zero bytes up to ``inflated_bytes``, gzip-compressed.

    Zeros after the end-of-archive blocks are allowed, so only the inflation limit stops
    it; the compressed result is about a thousandth of ``inflated_bytes``.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [compressor.compress(archive)]
    zeros = bytes(1 << 20)
    remaining = inflated_bytes - len(archive)
    while remaining > 0:
        chunk = zeros[: min(remaining, len(zeros))]
        out.append(compressor.compress(chunk))
        remaining -= len(chunk)
    out.append(compressor.flush())
    return b"".join(out)


def header_offset(archive: bytes, name: str) -> int:
    """Offset of the header of the first member called ``name`` in an uncompressed archive."""
    offset = 0
    while offset + BLOCK <= len(archive):
        header = archive[offset : offset + BLOCK]
        if header == bytes(BLOCK):
            break
        if header[:100].split(b"\x00", 1)[0].decode() == name:
            return offset
        size = int(header[124:136].split(b"\x00", 1)[0] or b"0", 8)
        offset += BLOCK + size + (-size % BLOCK)
    raise KeyError(name)


# --------------------------------------------------------------------------------------
# Whole bundles
# --------------------------------------------------------------------------------------


def bundle_members(
    envelope: bytes,
    files: Mapping[str, bytes] = GOOD_FILES,
    *,
    roots: Iterable[tuple[str, bytes]] = (),
) -> list[TarMember]:
    """Members in the order the format requires: roots, ``bundle.json``, ``payload/...``."""
    members = [regular(name, data) for name, data in roots]
    members.append(regular("bundle.json", envelope))
    for path, data in files.items():
        members += file_members(f"payload/{path}", data)
    return members


def bundle_archive(
    envelope: bytes,
    files: Mapping[str, bytes] = GOOD_FILES,
    *,
    roots: Iterable[tuple[str, bytes]] = (),
    compress: bool = False,
) -> bytes:
    return write_tar(bundle_members(envelope, files, roots=roots), compress=compress)


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    """A bundle and the parts it was made of, for tests that tamper with one part."""

    archive: bytes
    envelope: bytes
    payload: bytes
    files: Mapping[str, bytes]
    roots: tuple[tuple[str, bytes], ...]

    @property
    def digest(self) -> str:
        """The content identity ``verify`` reports: SHA-256 of the signed metadata payload."""
        return hashlib.sha256(self.payload).hexdigest()

    def members(self) -> list[TarMember]:
        return bundle_members(self.envelope, self.files, roots=self.roots)


def good_bundle(
    authority: Authority | None = None,
    *,
    revision: int = 1,
    issued_at: dt.datetime = ISSUED_AT,
    expires_at: dt.datetime | None = None,
    files: Mapping[str, bytes] = GOOD_FILES,
    signers: Iterable[SigningKey] | None = None,
    with_roots: bool = True,
    compress: bool = False,
    **metadata: Any,
) -> BuiltBundle:
    """A valid bundle for cluster ``site-1``: two layers, one artifact, signed by policy keys.

    ``files`` replaces the payload (its entries are listed with their real hashes, so
    the layers/artifacts passed in ``metadata`` must name them); the roots newer than
    version 1 that ``authority`` holds are carried unless ``with_roots`` is false.
    """
    authority = authority or Authority()
    payload = metadata_payload(
        revision=revision, issued_at=issued_at, expires_at=expires_at, files=files, **metadata
    )
    envelope = authority.sign_bundle(payload, signers)
    roots = tuple(authority.root_members()) if with_roots else ()
    return BuiltBundle(
        archive=bundle_archive(envelope, files, roots=roots, compress=compress),
        envelope=envelope,
        payload=payload,
        files=dict(files),
        roots=roots,
    )


class RecordingSink:
    """An ``ArtifactSink`` that keeps what it was handed: path -> bytes, in call order."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.calls: list[str] = []

    def store(self, path: str, chunks: Iterable[bytes]) -> None:
        self.calls.append(path)
        self.stored[path] = b"".join(chunks)
