"""Property-based fuzzing of the archive reader and the verifier.

The one property: ``verify_bundle`` either returns a ``VerifiedBundle`` or raises
``BundleError`` whose message is a single line. Any other exception is a crash, and
every input below is something an attacker (or a half-copied USB stick) can hand the
agent. Inputs go from shallow to deep:

(a) arbitrary bytes, raw and behind a gzip magic;
(b) a real good bundle with bit flips, byte writes, truncations, insertions, deletions;
(c) archives written member by member with ``tests.factory.write_tar``: random member
    lists, and the good bundle's member list edited (dropped, repeated, reordered,
    retyped, resized members);
(d) random metadata and root documents that are validly signed, so the parsers behind
    the signature check run on them;
(e) random YAML manifests that are validly listed and signed, so the strict YAML loader
    runs on them.

Limits are small (1 MiB archives) so that no example can spend long inflating or reading.
The defaults take about 15 s; ``FUZZ_SCALE=40`` multiplies the examples for a long hunt.
Every crash these tests found has a regression case in ``tests/adversarial.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
from collections.abc import Callable
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge_agent.bundle.envelope import ROOT_PAYLOAD_TYPE
from edge_agent.bundle.trust import TrustState
from edge_agent.bundle.verify import Limits, verify_bundle
from edge_agent.errors import BundleError
from tests.factory import (
    APP_PATH,
    APP_YAML,
    ARTIFACT_BYTES,
    ARTIFACT_PATH,
    BLOCK,
    GNU_MAGIC,
    IDENTITY,
    NAMESPACE_PATH,
    NAMESPACE_YAML,
    REFERENCE_TIME,
    USTAR_MAGIC,
    Authority,
    RecordingSink,
    TarMember,
    bundle_archive,
    good_bundle,
    metadata_document,
    pax_records,
    sign,
    write_tar,
)

LIMITS = Limits(
    max_bundle_bytes=1 << 20,
    max_file_bytes=1 << 16,
    max_manifest_bytes=1 << 16,
    max_total_manifest_bytes=1 << 17,
    max_metadata_bytes=1 << 16,
    max_members=64,
)

# One authority for the whole module: v1 and a rotated v2 (new root key, new policy key).
AUTHORITY = Authority("fuzz")
V1_TRUST = AUTHORITY.trust_state()
V2 = AUTHORITY.next_root(add_policy=1)
GOOD = good_bundle(AUTHORITY)
GOOD_GZIP = good_bundle(AUTHORITY, compress=True)
# A site at v1 and a bundle that carries roots/2.json and is signed by v2's policy key.
ROTATED = Authority("fuzz-rotated")
ROTATED_TRUST = ROTATED.trust_state()
ROTATED.rotate(add_policy=1)
GOOD_ROTATED = good_bundle(ROTATED, signers=[ROTATED.current.policy_keys[-1]])
GOOD_FILES_LIST = tuple(GOOD.files.items())


# --------------------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------------------


def check(
    archive: bytes, *, trust: TrustState = V1_TRUST, now: dt.datetime = REFERENCE_TIME
) -> None:
    """Verify ``archive``; pass on success or a one-line BundleError, fail on anything else.

    Each outcome is recorded as a hypothesis event: ``--hypothesis-show-statistics``
    shows how deep the examples of a test got (how many reached YAML, or verified).
    """
    try:
        verify_bundle(
            io.BytesIO(archive),
            trust=trust,
            identity=IDENTITY,
            now=now,
            limits=LIMITS,
            sink=RecordingSink(),
        )
        event("verified")
    except BundleError as exc:
        event(exc.code.value)
        assert "\n" not in str(exc) and "\r" not in str(exc), f"not one line: {str(exc)!r}"


#: ``FUZZ_SCALE=20 pytest tests/unit/test_fuzz_bundle.py`` for a long hunt; 1 in CI.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> Callable[[Any], Any]:
    # Examples sign and build archives, so hypothesis may call the generation slow on a
    # loaded two-core machine: that health check only, nothing that hides a failure.
    return settings(
        max_examples=max(1, int(max_examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


def test_seeds_verify() -> None:
    """The good inputs the fuzzers start from verify, so damage is all they test."""
    seeds = (
        (GOOD.archive, V1_TRUST),
        (GOOD_GZIP.archive, V1_TRUST),
        (GOOD_ROTATED.archive, ROTATED_TRUST),
    )
    for archive, trust in seeds:
        verify_bundle(
            io.BytesIO(archive),
            trust=trust,
            identity=IDENTITY,
            now=REFERENCE_TIME,
            limits=LIMITS,
            sink=RecordingSink(),
        )


# --------------------------------------------------------------------------------------
# (a) arbitrary bytes
# --------------------------------------------------------------------------------------


@fuzz(300)
@given(st.binary(max_size=3 * BLOCK))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)


@fuzz(150)
@given(st.binary(max_size=BLOCK))
def test_arbitrary_bytes_behind_gzip_magic(data: bytes) -> None:
    check(b"\x1f\x8b" + data)


_HEADER_NAMES = ("bundle.json", "roots/2.json", f"payload/{NAMESPACE_PATH}", "payload/x")


def plausible_header(block: bytes, name: bytes | None, size: int | None) -> bytes:
    """Random header bytes made to pass the magic and checksum checks (and, if given, with
    a real name and size), so the reader goes on to interpret random fields."""
    header = bytearray(block)
    if name is not None:
        header[0:100] = name[:100].ljust(100, b"\x00")
    if size is not None:
        header[124:136] = b"%011o\x00" % size
    header[257:265] = USTAR_MAGIC
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


@fuzz(300)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=BLOCK, max_size=BLOCK),
            st.one_of(st.none(), st.sampled_from([n.encode() for n in _HEADER_NAMES])),
            st.booleans(),
            st.binary(max_size=2 * BLOCK),
        ),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from((b"", bytes(2 * BLOCK))),
)
def test_arbitrary_header_blocks(
    blocks: list[tuple[bytes, bytes | None, bool, bytes]], end: bytes
) -> None:
    archive = b"".join(
        plausible_header(header, name, len(data) if sized else None)
        + data
        + bytes(-len(data) % BLOCK)
        for header, name, sized, data in blocks
    )
    check(archive + end)


# --------------------------------------------------------------------------------------
# (b) a good bundle, damaged at random offsets
# --------------------------------------------------------------------------------------

_HEADER_FIELDS = (0, 99, 100, 124, 130, 135, 136, 148, 154, 155, 156, 157, 257, 262, 263, 345)


def _interesting_offsets(archive: bytes) -> list[int]:
    headers = [
        o for o in range(0, len(archive), BLOCK) if archive[o + 257 : o + 263] == b"ustar\x00"
    ]
    return [h + f for h in headers for f in _HEADER_FIELDS] + [len(archive) - BLOCK * 2]


def _mutations(size: int, interesting: list[int]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    offset = st.one_of(st.integers(0, size), st.sampled_from(interesting))
    mutation = st.one_of(
        st.tuples(st.just("flip"), offset, st.integers(0, 7)),
        st.tuples(st.just("write"), offset, st.binary(min_size=1, max_size=12)),
        st.tuples(st.just("truncate"), offset),
        st.tuples(st.just("insert"), offset, st.binary(min_size=1, max_size=BLOCK + 1)),
        st.tuples(st.just("delete"), offset, st.integers(1, 2 * BLOCK)),
    )
    return st.lists(mutation, min_size=1, max_size=4)


def damage(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(data)
    for kind, at, *arg in mutations:
        at = min(at, len(out))
        if kind == "flip" and at < len(out):
            out[at] ^= 1 << arg[0]
        elif kind == "write":
            out[at : at + len(arg[0])] = arg[0]
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = arg[0]
        elif kind == "delete":
            del out[at : at + arg[0]]
    return bytes(out)


@fuzz(400)
@given(_mutations(len(GOOD.archive), _interesting_offsets(GOOD.archive)))
def test_damaged_bundle(mutations: list[tuple[Any, ...]]) -> None:
    check(damage(GOOD.archive, mutations))


@fuzz(300)
@given(_mutations(len(GOOD_ROTATED.archive), _interesting_offsets(GOOD_ROTATED.archive)))
def test_damaged_bundle_carrying_a_root(mutations: list[tuple[Any, ...]]) -> None:
    check(damage(GOOD_ROTATED.archive, mutations), trust=ROTATED_TRUST)


@fuzz(200)
@given(_mutations(len(GOOD_GZIP.archive), [0, 1, 2, 3, 9, 10]))
def test_damaged_gzip_bundle(mutations: list[tuple[Any, ...]]) -> None:
    check(damage(GOOD_GZIP.archive, mutations))


# --------------------------------------------------------------------------------------
# (c) archives written member by member
# --------------------------------------------------------------------------------------

_NAMES = (
    "bundle.json",
    "roots/1.json",
    "roots/2.json",
    "roots/3.json",
    "roots/0.json",
    "roots/x.json",
    f"payload/{NAMESPACE_PATH}",
    f"payload/{APP_PATH}",
    f"payload/{ARTIFACT_PATH}",
    "payload/unlisted.yaml",
    "payload/",
    "payload//x",
    "payload/./x",
    "payload/../x",
    "/etc/passwd",
    "C:\\x",
    "",
)
_DATA = (GOOD.envelope, V2.envelope, NAMESPACE_YAML, APP_YAML, ARTIFACT_BYTES, b"")
_TYPEFLAGS = tuple(bytes([c]) for c in b"0\x001234567xgLKSAVD")
_PAX_KEYS = ("path", "size", "linkpath", "mtime", "comment", "GNU.sparse.map", "uid")

names = st.one_of(st.sampled_from(_NAMES), st.text(max_size=25))
pax_data = st.dictionaries(
    st.one_of(st.sampled_from(_PAX_KEYS), st.text(min_size=1, max_size=8)),
    st.one_of(st.sampled_from(_NAMES), st.integers(0, 10**6).map(str), st.text(max_size=12)),
    max_size=3,
).map(pax_records)
member_data = st.one_of(st.sampled_from(_DATA), st.binary(max_size=2 * BLOCK), pax_data)
members = st.builds(
    TarMember,
    name=names,
    data=member_data,
    typeflag=st.one_of(st.just(b"0"), st.sampled_from(_TYPEFLAGS)),
    linkname=st.one_of(st.just(""), st.sampled_from(_NAMES)),
    size=st.one_of(st.none(), st.none(), st.integers(0, 4 * BLOCK), st.integers(0, 8**11 - 1)),
    prefix=st.one_of(st.just(""), st.just(""), st.sampled_from(("payload", "/", "..", "roots"))),
    magic=st.one_of(st.just(USTAR_MAGIC), st.sampled_from((GNU_MAGIC, b"", b"ustar\x00"))),
    checksum=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 8**6 - 1)),
    pad=st.one_of(st.just(True), st.booleans()),
)
tar_options = st.fixed_dictionaries(
    {
        "end_blocks": st.sampled_from((2, 2, 0, 1, 3)),
        "trailer": st.one_of(st.just(b""), st.binary(max_size=BLOCK), st.just(bytes(5000))),
        "compress": st.booleans(),
    }
)


@fuzz(300)
@given(st.lists(members, max_size=6), tar_options)
def test_random_member_lists(member_list: list[TarMember], options: dict[str, Any]) -> None:
    check(write_tar(member_list, **options))


@st.composite
def edited_good_members(draw: st.DrawFn) -> list[TarMember]:
    """The good bundle's (plus a root's) members, edited a few times."""
    out = [TarMember("roots/2.json", V2.envelope), *GOOD.members()]
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(
            st.sampled_from(("drop", "repeat", "swap", "insert", "retype", "resize", "rename"))
        )
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        if not out and edit != "insert":
            continue
        if edit == "drop":
            del out[i]
        elif edit == "repeat":
            out.insert(i, out[i])
        elif edit == "swap":
            j = draw(st.integers(0, len(out) - 1))
            out[i], out[j] = out[j], out[i]
        elif edit == "insert":
            out.insert(i, draw(members))
        elif edit == "retype":
            out[i] = dataclasses.replace(out[i], typeflag=draw(st.sampled_from(_TYPEFLAGS)))
        elif edit == "resize":
            out[i] = dataclasses.replace(out[i], size=draw(st.integers(0, 3 * BLOCK)))
        elif edit == "rename":
            out[i] = dataclasses.replace(out[i], name=draw(names))
    return out


@fuzz(300)
@given(edited_good_members(), st.booleans())
def test_edited_good_member_lists(member_list: list[TarMember], compress: bool) -> None:
    check(write_tar(member_list, compress=compress))


# --------------------------------------------------------------------------------------
# (d) validly signed metadata and root documents
# --------------------------------------------------------------------------------------

_STRINGS = (
    "site-1",
    "enforce",
    "audit",
    "file",
    "image-archive",
    "2026-11-24T11:00:00Z",
    "2099-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0000-00-00T00:00:00Z",
    NAMESPACE_PATH,
    ARTIFACT_PATH,
    "../etc/passwd",
    "a" * 64,
    "ed25519",
    "edge-agent/bundle",
    "edge-agent/root",
    "line\nbreak",
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.sampled_from((0, 1, 2, 10, 86400, 2**53 - 1, 2**53)),
    st.sampled_from(_STRINGS),
    st.text(max_size=16),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(_STRINGS), st.text(max_size=8)), inner, max_size=4
        ),
    ),
    max_leaves=12,
)


def encode_json(document: Any, *, canonical_layout: bool) -> bytes:
    """JSON bytes; with ``canonical_layout`` as the canonical encoder lays it out."""
    if canonical_layout:
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    return json.dumps(document, indent=1).encode()


@st.composite
def edited_document(draw: st.DrawFn, document: dict[str, Any]) -> Any:
    """``document`` with a few random edits at random places in its tree."""
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        node: Any = document
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            key = draw(
                st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node)))
            )
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        if isinstance(node, dict):
            edit = draw(st.sampled_from(("set", "set", "delete", "add")))
            if edit == "add" or not node:
                node[draw(st.text(max_size=8))] = draw(json_values)
            elif edit == "set":
                node[draw(st.sampled_from(sorted(node)))] = draw(json_values)
            else:
                del node[draw(st.sampled_from(sorted(node)))]
        elif isinstance(node, list):
            if len(node) > 0 and draw(st.booleans()):
                node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
            else:
                node.append(draw(json_values))
    return document


def _metadata() -> dict[str, Any]:
    return metadata_document()


@fuzz(300)
@given(edited_document(_metadata()), st.booleans())
def test_signed_edited_metadata(document: Any, canonical_layout: bool) -> None:
    payload = encode_json(document, canonical_layout=canonical_layout)
    check(bundle_archive(AUTHORITY.sign_bundle(payload)))


@fuzz(150)
@given(json_values)
def test_signed_random_metadata(document: Any) -> None:
    payload = encode_json(document, canonical_layout=True)
    check(bundle_archive(AUTHORITY.sign_bundle(payload)))


TIMES = (
    *(REFERENCE_TIME + dt.timedelta(days=d) for d in (-400, -60, -40, -1, 0, 1, 2, 30, 400)),
    dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
)
times = st.sampled_from(TIMES)
lifetimes = st.sampled_from((0, 1, 86_400, 30 * 86_400, 400 * 86_400)).map(
    lambda s: dt.timedelta(seconds=s)
)


TARGETS: tuple[dict[str, Any], ...] = (
    {"cluster_id": "site-1"},
    {"cluster_id": "site-2"},
    {"labels": {"region": "north"}},
    {"labels": {"region": "north", "tier": "core"}},
)


@st.composite
def plausible_metadata(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Well-typed metadata with plausible values, and payload files that may not match it:
    these examples get past parsing to the time, target, revision and payload checks."""
    files = dict(draw(st.permutations(list(GOOD_FILES_LIST))))
    issued_at = draw(times)
    document = metadata_document(
        revision=draw(st.sampled_from((1, 2, 5, 6, 2**53 - 1))),
        issued_at=issued_at,
        expires_at=issued_at + draw(lifetimes),
        target=draw(st.sampled_from(TARGETS)),
        files=files,
    )
    for path in draw(st.lists(st.sampled_from(sorted(files)), max_size=2)):
        entry = document["files"][path]
        if draw(st.booleans()):
            entry["length"] = draw(st.integers(0, 2 * len(files[path])))
        else:
            entry["sha256"] = hashlib.sha256(draw(st.binary(max_size=4))).hexdigest()
    if draw(st.booleans()):
        del files[draw(st.sampled_from(sorted(files)))]
    return document, files


site_trust = st.builds(
    lambda revision, high_water: AUTHORITY.trust_state(
        revision=revision, digest=None if revision is None else "0" * 64, time_high_water=high_water
    ),
    st.sampled_from((None, 1, 5)),
    st.one_of(st.none(), times),
)


@fuzz(300)
@given(plausible_metadata(), site_trust, times)
def test_signed_plausible_metadata(
    bundle: tuple[dict[str, Any], dict[str, bytes]], trust: TrustState, now: dt.datetime
) -> None:
    document, files = bundle
    payload = encode_json(document, canonical_layout=True)
    check(bundle_archive(AUTHORITY.sign_bundle(payload), files), trust=trust, now=now)


@fuzz(300)
@given(edited_document(json.loads(V2.payload)), st.booleans())
def test_signed_edited_root(document: Any, canonical_layout: bool) -> None:
    # Signed by the v1 root key (so advance_root parses it) and by v2's own root key.
    payload = encode_json(document, canonical_layout=canonical_layout)
    envelope = sign(ROOT_PAYLOAD_TYPE, payload, [AUTHORITY.root_key, *V2.root_keys])
    check(bundle_archive(GOOD.envelope, roots=[("roots/2.json", envelope)]))


# --------------------------------------------------------------------------------------
# (e) validly signed YAML manifests
# --------------------------------------------------------------------------------------

_YAML_ALPHABET = [
    *"ab01.:-[]{}&*!|>'\"#%@`,?<=~ \n\t\\",
    "<<",
    "---",
    "...",
    "!!",
    "\ufeff",
    "\x07",
]

yaml_soup = st.lists(st.sampled_from(_YAML_ALPHABET), max_size=80).map("".join)
kubernetes_like = st.fixed_dictionaries(
    {"apiVersion": json_scalars, "kind": json_scalars, "metadata": json_values},
    optional={"data": json_values, "spec": json_values},
).map(lambda doc: yaml.safe_dump(doc, allow_unicode=True))
yaml_fragments = st.lists(
    st.sampled_from(
        (
            "a: &x {b: 1}\n",
            "c: *x\n",
            "<<: *x\n",
            "d: !!binary aGk=\n",
            "e: !tag v\n",
            "f: 2026-11-24\n",
            "g: 0x1F\n",
            "h: 1:20:30\n",
            "i: .inf\n",
            "? [k]\n: v\n",
            "---\n",
            "...\n",
            "%YAML 1.1\n---\n",
            "- x\n",
            "j: |\n  text\n",
            "apiVersion: v1\n",
            "kind: ConfigMap\n",
            "metadata: {name: m}\n",
            "  nested: 1\n",
        )
    ),
    max_size=8,
).map("".join)
manifest_text = st.one_of(
    yaml_soup,
    kubernetes_like,
    yaml_fragments,
    st.tuples(kubernetes_like, yaml_fragments).map("".join),
    st.text(max_size=200),
)


def signed_bundle_with_manifest(manifest: bytes) -> bytes:
    files = {NAMESPACE_PATH: manifest, APP_PATH: APP_YAML, ARTIFACT_PATH: ARTIFACT_BYTES}
    return good_bundle(AUTHORITY, files=files).archive


@fuzz(400)
@given(manifest_text)
def test_signed_random_yaml(text: str) -> None:
    check(signed_bundle_with_manifest(text.encode("utf-8", "surrogatepass")))


@fuzz(100)
@given(st.binary(max_size=300))
def test_signed_random_manifest_bytes(data: bytes) -> None:
    check(signed_bundle_with_manifest(data))
