"""Drift: does a live object still hold what the desired manifest sets?

One concept: a recursive "desired is a subset of live" comparison, reporting the paths of
the fields that differ (``spec.replicas``,
``spec.template.spec.containers[name=web].image``). Only the fields the desired manifest
sets are compared; everything else on the live object — server defaults, ``status``, fields
other writers own (an HPA's ``replicas`` when the manifest omits it, a sidecar an injector
adds) — is not the agent's concern. This is the same line server-side apply draws.

What is never compared: ``apiVersion``, ``kind``, ``metadata.name`` and ``.namespace``
(identity: the caller matched the objects by ref; LIST items carry no kind), ``status``, and
the server-owned ``metadata`` fields ``managedFields``, ``resourceVersion``, ``uid``,
``generation``, ``creationTimestamp``, ``selfLink``, ``deletionTimestamp``,
``deletionGracePeriodSeconds``.

Normalisations (each keeps a real API server's rewriting from looking like drift):

* **null** in the desired manifest means "not set": not compared.
* **Empty and zero values vs absent**: the API server omits ``omitempty`` fields, so a desired
  ``{}``, ``[]``, ``""``, ``0`` or ``false`` (or a map holding only such values) equals an
  absent live field. Not inside free-form maps (``labels``, ``annotations``, ``data``,
  ``binaryData``, ``nodeSelector``, ``matchLabels``, ``selector``, ``parameters`` and the
  quantity maps below), where an entry with an empty value is kept by the server and so must
  exist. Cost: a desired ``false``/``0`` that another writer removed is not reported.
* **Extra live keys** in any map (labels, annotations, defaulted fields such as a
  Deployment's ``spec.strategy.rollingUpdate``, ``progressDeadlineSeconds``, a container's
  ``terminationMessagePath``, a Service's ``clusterIP``/``sessionAffinity``/``targetPort``,
  a Secret's ``type: Opaque``) are ignored: subset comparison.
* **Resource quantities** in ``requests``, ``limits``, ``hard``, ``capacity``,
  ``allocatable``, ``overhead``, LimitRange ``default``/``defaultRequest``/``max``/``min``/
  ``maxLimitRequestRatio`` maps and ``sizeLimit`` compare by value, rounded up to 10^-9 as
  the server does: ``"1000m"`` == ``"1"`` == ``1``, ``"0.5"`` == ``"500m"``,
  ``"1Gi"`` == ``"1073741824"`` == ``"1024Mi"``, ``"1e3"`` == ``"1k"``.
* **int vs string**: an int equals its decimal string (``targetPort: 8080`` vs ``"8080"``,
  a port in a key). A bool never equals a number.
* **Lists of maps with a merge key** are matched by key, not position, and live items the
  manifest does not name are ignored (server-side apply's list-map semantics). Keys:
  ``containers``, ``initContainers``, ``ephemeralContainers``, ``env``, ``volumes``,
  ``imagePullSecrets``, ``resourceClaims``, ``schedulingGates``, ``webhooks``, CRD
  ``versions`` by ``name``; ``volumeMounts`` by ``mountPath``; ``volumeDevices`` by
  ``devicePath``; ``hostAliases`` by ``ip``; ``topologySpreadConstraints`` by
  (``topologyKey``, ``whenUnsatisfiable``); ``ports`` by (``containerPort``, ``protocol``)
  for container ports and (``port``, ``protocol``) for Service ports, ``protocol``
  defaulting to ``TCP``. A list whose items lack the key, or repeat it, falls back to
  position. ``metadata.finalizers`` is a set: the desired ones must be present. Every other
  list is atomic: same length, items compared by position (map items as subsets).
* **Secrets**: ``stringData`` is folded into ``data`` as base64 (``stringData`` wins, as on
  the server) and reported under ``data``; ``data`` and ``binaryData`` values compare as
  decoded bytes.

Does not: fetch objects, apply, decide what to do about drift, or report values — a path is
enough to act on and a value may be a secret. Pure: no I/O, no clock, inputs not mutated.

Invariants: ``detect(d, l)`` is deterministic; paths are unique, in the desired manifest's
order; ``detect(d, d)`` reports no drift for any manifest ``d``.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

_ABSENT: Final = object()

_IGNORED_TOP = frozenset({"apiVersion", "kind", "status"})
_IGNORED_METADATA = frozenset(
    {
        "name",
        "namespace",
        "managedFields",
        "resourceVersion",
        "uid",
        "generation",
        "creationTimestamp",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    }
)
_QUANTITY_MAPS = frozenset(
    {
        "requests",
        "limits",
        "hard",
        "capacity",
        "allocatable",
        "overhead",
        "default",
        "defaultRequest",
        "max",
        "min",
        "maxLimitRequestRatio",
    }
)
_QUANTITY_FIELDS = frozenset({"sizeLimit"})
_FREEFORM_MAPS = (
    frozenset(
        {
            "labels",
            "annotations",
            "data",
            "binaryData",
            "stringData",
            "nodeSelector",
            "matchLabels",
            "selector",
            "parameters",
        }
    )
    | _QUANTITY_MAPS
)
#: Label selectors are atomic on the API server: a live selector with extra terms selects
#: other pods (a deny-all ``podSelector: {}`` narrowed to nothing), so they compare exactly.
_EXACT_MAPS = frozenset({"matchLabels", "podSelector", "namespaceSelector"})
#: Pointer fields keep an explicit ``false``/``0`` (absent means "unset", often the unsafe
#: default: token automounted, privilege escalation allowed, image's user), so a desired
#: ``false``/``0`` must be present live.
_POINTER_FIELDS = frozenset(
    {
        "automountServiceAccountToken",
        "allowPrivilegeEscalation",
        "privileged",
        "readOnlyRootFilesystem",
        "runAsNonRoot",
        "runAsUser",
        "runAsGroup",
        "fsGroup",
        "enableServiceLinks",
        "hostUsers",
        "shareProcessNamespace",
    }
)
_BY_NAME = (("name",),)
_LIST_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "containers": _BY_NAME,
    "initContainers": _BY_NAME,
    "ephemeralContainers": _BY_NAME,
    "env": _BY_NAME,
    "volumes": _BY_NAME,
    "imagePullSecrets": _BY_NAME,
    "resourceClaims": _BY_NAME,
    "schedulingGates": _BY_NAME,
    "webhooks": _BY_NAME,
    "versions": _BY_NAME,
    "volumeMounts": (("mountPath",),),
    "volumeDevices": (("devicePath",),),
    "hostAliases": (("ip",),),
    "topologySpreadConstraints": (("topologyKey", "whenUnsatisfiable"),),
    "ports": (("containerPort", "protocol"), ("port", "protocol")),
}
_KEY_DEFAULTS: dict[str, Any] = {"protocol": "TCP"}
_SET_LISTS = frozenset({"finalizers"})
_BASE64_MAPS = {"Secret": frozenset({"data", "binaryData"}), "ConfigMap": frozenset({"binaryData"})}

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INT = re.compile(r"[+-]?[0-9]+")
_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?"
)
_SUFFIX: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{
        suffix: Decimal(1024**power)
        for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)
    },
}
_NANO = Decimal("1e-9")
_QUANTITY_CONTEXT = decimal.Context(prec=80, rounding=decimal.ROUND_CEILING)


@dataclass(frozen=True, slots=True)
class Drift:
    """How a live object differs from its desired manifest (field paths only, no values)."""

    paths: tuple[str, ...] = ()
    missing: bool = False  # the live object does not exist at all

    @property
    def drifted(self) -> bool:
        return self.missing or bool(self.paths)

    def describe(self, limit: int = 5) -> str:
        """One short line: ``missing``, ``in sync`` or the first paths."""
        if self.missing:
            return "missing"
        if not self.paths:
            return "in sync"
        shown = ", ".join(self.paths[:limit])
        more = len(self.paths) - limit
        return f"{shown} (+{more} more)" if more > 0 else shown


def detect(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> Drift:
    """Compare ``live`` with ``desired`` on the fields ``desired`` sets; None: missing."""
    if live is None:
        return Drift(missing=True)
    kind = desired.get("kind")
    out: list[str] = []
    for key, want in _prepare(desired).items():
        if key in _IGNORED_TOP:
            continue
        have = live.get(key, _ABSENT)
        if key == "metadata" and isinstance(want, Mapping):
            want = {k: v for k, v in want.items() if k not in _IGNORED_METADATA}
        if isinstance(kind, str) and key in _BASE64_MAPS.get(kind, ()):
            _compare_base64(want, have, key, out)
        else:
            _compare(want, have, key, key, out)
    return Drift(paths=tuple(dict.fromkeys(out)))


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes resource quantity as an exact number (rounded up to 10^-9), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, int | float):
        number = Decimal(str(value))
    else:
        match = _QUANTITY.fullmatch(value.strip())
        if match is None:
            return None
        mantissa, suffix = match.group(1), match.group(2) or ""
        if suffix[:1] in ("e", "E"):
            number = Decimal(mantissa + suffix)
        else:
            number = _QUANTITY_CONTEXT.multiply(Decimal(mantissa), _SUFFIX[suffix])
    return number.quantize(_NANO, context=_QUANTITY_CONTEXT)


def _prepare(desired: Mapping[str, Any]) -> Mapping[str, Any]:
    """Fold a Secret's stringData into data (base64), as the API server stores it."""
    string_data = desired.get("stringData")
    if desired.get("kind") != "Secret" or not isinstance(string_data, Mapping):
        return desired
    data = dict(desired.get("data") or {})
    for key, value in string_data.items():
        if value is not None:
            data[key] = base64.b64encode(str(value).encode()).decode()
    return {**{k: v for k, v in desired.items() if k != "stringData"}, "data": data}


def _compare(want: Any, have: Any, path: str, field: str, out: list[str]) -> None:
    if want is None:
        return
    if have is _ABSENT or have is None:
        if not _is_unset(want, field):
            out.append(path)
        return
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            out.append(path)
            return
        if field in _EXACT_MAPS:
            wanted_keys = {k for k, v in want.items() if v is not None and not _is_unset(v, k)}
            extra = sorted(
                k
                for k, v in have.items()
                if k not in want and k not in wanted_keys and v not in ({}, [], None, "")
            )
            if extra:
                out.append(_join(path, extra[0]))
        for key, value in want.items():
            child = have.get(key, _ABSENT)
            child_path = _join(path, key)
            if field in _QUANTITY_MAPS and not isinstance(value, Mapping | list):
                if value is not None and not _scalar_equal(value, child, quantity=True):
                    out.append(child_path)
                continue
            # An entry of a free-form map is kept even when empty: it must exist.
            if (
                field in _FREEFORM_MAPS
                and value is not None
                and (child is _ABSENT or child is None)
            ):
                out.append(child_path)
                continue
            _compare(value, child, child_path, key, out)
        return
    if isinstance(want, list):
        if not isinstance(have, list):
            out.append(path)
            return
        _compare_list(want, have, path, field, out)
        return
    if not _scalar_equal(want, have, quantity=field in _QUANTITY_FIELDS):
        out.append(path)


def _compare_list(
    want: Sequence[Any], have: Sequence[Any], path: str, field: str, out: list[str]
) -> None:
    item_field = f"{field}[]"
    if field in _SET_LISTS:
        for item in want:
            if item is not None and not any(_scalar_equal(item, h) for h in have):
                out.append(f"{path}[{item}]")
        return
    keys = _list_key(field, want)
    if keys is None:
        if len(want) != len(have):
            out.append(path)
            return
        for index, (w, h) in enumerate(zip(want, have, strict=True)):
            _compare(w, h, f"{path}[{index}]", item_field, out)
        return
    index_of = {_key_of(h, keys): h for h in have if isinstance(h, Mapping)}
    for item in want:
        label = ",".join(f"{k}={item[k]}" for k in keys if item.get(k) is not None)
        item_path = f"{path}[{label}]"
        match = index_of.get(_key_of(item, keys), _ABSENT)
        if match is _ABSENT:
            out.append(item_path)
        else:
            _compare(item, match, item_path, item_field, out)


def _list_key(field: str, want: Sequence[Any]) -> tuple[str, ...] | None:
    for keys in _LIST_KEYS.get(field, ()):
        required = [k for k in keys if k not in _KEY_DEFAULTS]
        if not all(
            isinstance(item, Mapping) and all(item.get(k) is not None for k in required)
            for item in want
        ):
            continue
        if len({_key_of(item, keys) for item in want}) == len(want):
            return keys
    return None


def _key_of(item: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[Any, ...]:
    values = []
    for key in keys:
        value = item.get(key)
        if value is None:
            value = _KEY_DEFAULTS.get(key)
        if isinstance(value, str) and _INT.fullmatch(value):
            value = int(value)
        values.append(value)
    return tuple(values)


def _compare_base64(want: Any, have: Any, path: str, out: list[str]) -> None:
    if not isinstance(want, Mapping) or not isinstance(have, Mapping):
        _compare(want, have, path, path, out)
        return
    for key, value in want.items():
        if value is None:
            continue
        child = have.get(key)
        if child is None or _decoded(value) != _decoded(child):
            out.append(_join(path, key))


def _decoded(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value


def _is_unset(want: Any, field: str) -> bool:
    """True when the API server would store ``want`` as an absent field (``omitempty``)."""
    if want is None:
        return True
    if field in _POINTER_FIELDS:
        return False
    if isinstance(want, Mapping):
        entries_kept = field in _FREEFORM_MAPS
        return all(v is None or (not entries_kept and _is_unset(v, k)) for k, v in want.items())
    if isinstance(want, list):
        return not want
    return want is False or want == "" or (type(want) in (int, float) and want == 0)


def _scalar_equal(want: Any, have: Any, *, quantity: bool = False) -> bool:
    if have is _ABSENT:
        return False
    if isinstance(want, bool) or isinstance(have, bool):
        return isinstance(want, bool) and isinstance(have, bool) and want == have
    if want == have:
        return True
    if quantity:
        mine, theirs = parse_quantity(want), parse_quantity(have)
        return mine is not None and mine == theirs
    if isinstance(want, int) and isinstance(have, str) and _INT.fullmatch(have):
        return want == int(have)
    if isinstance(have, int) and isinstance(want, str) and _INT.fullmatch(want):
        return have == int(want)
    return False


def _join(path: str, key: str) -> str:
    if not _PLAIN_KEY.fullmatch(key):
        return f'{path}["{key}"]'
    return f"{path}.{key}"
