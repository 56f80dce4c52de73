"""``mgmt-stub``: the management side's command line.

    mgmt-stub keys init   --keys DIR [--root-keys N --root-threshold T --policy-keys N
                          --policy-threshold T --expires-days D]
    mgmt-stub keys rotate --keys DIR [--revoke KEYID]... [--new-policy-key] [--new-root-key]
                          [--expires-days D]
    mgmt-stub keys show   --keys DIR [--json]
    mgmt-stub bundle build --profile DIR --target TARGET --revision N --keys DIR -o FILE
                          [--expires-days D] [--gzip]

TARGET is a cluster id (``site-berlin-01``) or a label selector (``region=eu,tier=edge``).
Exit codes: 0 ok, 1 the operation failed (message on stderr), 2 usage error.
Private key material is never printed; key ids are.

The operator commands talk to a running server's admin API (``mgmt_stub.client``)::

    mgmt-stub profile put NAME --from DIR | list | show NAME
    mgmt-stub cluster list [--selector K=V,..] | show ID | register ID [--labels K=V,..]
                          [--agent-key B64] | label ID K=V,.. | agent-key ID B64 | revoke ID
    mgmt-stub assign put NAME --profile P (--selector K=V,.. | --cluster ID) [--priority N]
                          [--canary K=V,.. | --canary-percent N]
                          [--max-unavailable N | --max-unavailable-percent N]
    mgmt-stub assign list | show NAME | delete NAME
    mgmt-stub rollout list | pause ID | resume ID | rollback ID
    mgmt-stub token create [--uses N] [--ttl 24h] [--cluster ID] [--labels K=V,..]
                          [--description T] | list | revoke ID
    mgmt-stub operator create NAME --role viewer|operator|admin | list | revoke NAME
    mgmt-stub action queue TYPE (--selector K=V,.. | --cluster ID) [--param K=V]...
    mgmt-stub action list [--cluster ID]
    mgmt-stub bundle export (--cluster ID | --selector K=V,..) -o FILE | list
    mgmt-stub ingest FILE [--receipt OUT | --no-receipt]
    mgmt-stub cluster receipt ID -o FILE
    mgmt-stub audit [--limit N]

Each takes ``--server URL`` (default ``$MGMT_STUB_URL``, else http://127.0.0.1:8700),
``--credential-file FILE`` (default ``$MGMT_STUB_CREDENTIAL_FILE``, else the credential itself
from ``$MGMT_STUB_CREDENTIAL``; never from argv, where ``ps`` would show it), ``--ca FILE``,
``--timeout S`` and ``--json``. Exit codes: 0 ok, 1 the server refused (``mgmt-stub: DETAIL
(HTTP STATUS)``) or a local file is unusable, 2 usage error or no usable credential, 3 the
server did not answer. The credential is never printed; the secrets ``token create`` and
``operator create`` make are printed once, alone on stdout.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.bundle.model import is_valid_cluster_id, is_valid_label
from edge_agent.clock import SystemClock, format_time
from edge_agent.errors import EdgeAgentError
from edge_agent.files import atomic_write
from edge_agent.report import MAX_REPORT_BYTES, receipt_file_name
from mgmt_stub.builder import ProfileError, build_bundle
from mgmt_stub.client import (
    DEFAULT_SERVER,
    DEFAULT_TIMEOUT_S,
    AdminClient,
    ApiError,
    LocalError,
    UnreachableError,
    check_credential,
    profile_body,
    read_credential,
)
from mgmt_stub.keys import KeyDirectory, KeyStoreError
from mgmt_stub.storage import StorageError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is not None:
        return _admin(args)
    now = SystemClock().now()
    try:
        if args.area == "serve":
            return _serve(args)
        if args.area == "keys":
            keys = KeyDirectory(Path(args.keys))
            if args.action == "init":
                keys.init(
                    now=now,
                    expires_days=args.expires_days,
                    root_keys=args.root_keys,
                    root_threshold=args.root_threshold,
                    policy_keys=args.policy_keys,
                    policy_threshold=args.policy_threshold,
                )
            elif args.action == "rotate":
                keys.rotate(
                    now=now,
                    expires_days=args.expires_days,
                    revoke=args.revoke,
                    new_policy_keys=1 if args.new_policy_key else 0,
                    new_root_keys=1 if args.new_root_key else 0,
                )
            _show(keys, as_json=getattr(args, "json", False))
            return 0
        try:
            target = _target(args.target)
        except ValueError as exc:
            parser.print_usage(sys.stderr)
            print(f"mgmt-stub: {exc}", file=sys.stderr)
            return 2
        bundle_id = build_bundle(
            Path(args.profile),
            keys=KeyDirectory(Path(args.keys)),
            target=target,
            revision=args.revision,
            output=Path(args.output),
            now=now,
            expires_days=args.expires_days,
            gzip=args.gzip,
        )
        print(f"built {args.output}: bundle {bundle_id} revision {args.revision} for {args.target}")
        return 0
    except (KeyStoreError, ProfileError, EdgeAgentError, StorageError, OSError) as exc:
        print(f"mgmt-stub: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug, not a usage error: still one line, never a traceback
        print(f"mgmt-stub: unexpected {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from mgmt_stub.server import create_app
    from mgmt_stub.service import bootstrap_admin

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"mgmt-stub: --listen {args.listen!r} is not HOST:PORT", file=sys.stderr)
        return 2
    data, keys = Path(args.data), Path(args.keys)
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    written = bootstrap_admin(data, keys)
    if written is not None:
        logging.getLogger("mgmt_stub").info("initial admin credential written to %s", written)
    app = create_app(data, keys, stale_after_s=args.stale_after)
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=int(port),
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        access_log=args.access_log,
        timeout_keep_alive=120,  # agents keep one connection across their 60 s cycles
        timeout_graceful_shutdown=5,  # waiting agents are told to come back, not waited for
        backlog=4096,
        log_level="info",
        server_header=False,
    )
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mgmt-stub", description="Management side of edge-agent.")
    areas = parser.add_subparsers(dest="area", required=True)

    keys = areas.add_parser("keys", help="signing keys and trust roots").add_subparsers(
        dest="action", required=True
    )
    init = keys.add_parser("init", help="create root and policy keys and root version 1")
    init.add_argument("--root-keys", type=int, default=1)
    init.add_argument("--root-threshold", type=int, default=1)
    init.add_argument("--policy-keys", type=int, default=1)
    init.add_argument("--policy-threshold", type=int, default=1)
    rotate = keys.add_parser(
        "rotate", help="write the next root version (renew, add or revoke keys)"
    )
    rotate.add_argument(
        "--revoke",
        action="append",
        default=[],
        metavar="KEYID",
        help="key id (or unique prefix) to remove",
    )
    rotate.add_argument(
        "--new-policy-key", action="store_true", help="add a fresh policy-signing key"
    )
    rotate.add_argument("--new-root-key", action="store_true", help="add a fresh root key")
    show = keys.add_parser("show", help="print the current root: version, expiry, key ids")
    show.add_argument("--json", action="store_true")
    for sub in (init, rotate, show):
        sub.add_argument("--keys", required=True, metavar="DIR", help="key directory")
    for sub in (init, rotate):
        sub.add_argument(
            "--expires-days", type=int, default=365, help="root validity (default %(default)s)"
        )

    serve = areas.add_parser("serve", help="run the management server")
    serve.add_argument("--data", required=True, metavar="DIR", help="data directory (created)")
    serve.add_argument("--keys", required=True, metavar="DIR", help="signing key directory")
    serve.add_argument("--listen", default="127.0.0.1:8700", metavar="HOST:PORT")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    serve.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert")
    serve.add_argument(
        "--stale-after",
        type=int,
        default=900,
        metavar="S",
        help="a cluster unseen this long shows as stale (default %(default)s)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")

    bundle = areas.add_parser("bundle", help="offline bundles").add_subparsers(
        dest="action", required=True
    )
    build = bundle.add_parser("build", help="build and sign a bundle from a profile folder")
    build.add_argument("--profile", required=True, metavar="DIR")
    build.add_argument("--target", required=True, help="cluster id, or label selector k=v[,k=v]")
    build.add_argument("--revision", required=True, type=int)
    build.add_argument("--keys", required=True, metavar="DIR")
    build.add_argument("-o", "--output", required=True, metavar="FILE")
    build.add_argument(
        "--expires-days", type=int, default=30, help="bundle validity (default %(default)s)"
    )
    build.add_argument("--gzip", action="store_true", help="gzip the archive")
    _admin_parsers(areas, bundle)
    return parser


def _target(text: str) -> dict[str, Any]:
    if "=" not in text:
        if not is_valid_cluster_id(text):
            raise ValueError(f"target {text!r} is not a valid cluster id")
        return {"cluster_id": text}
    labels = {}
    for pair in text.split(","):
        key, _, value = pair.partition("=")
        if not is_valid_label(key, value):
            raise ValueError(f"target label {pair!r} is not a valid key=value label")
        labels[key] = value
    return {"labels": labels}


def _show(keys: KeyDirectory, *, as_json: bool) -> None:
    root, _ = keys.current_root()
    doc: dict[str, Any] = {
        "key_directory": str(keys.path),
        "root_version": root.version,
        "expires_at": format_time(root.expires_at),
        "root_keys": sorted(root.root_role.keyids),
        "root_threshold": root.root_role.threshold,
        "policy_keys": sorted(root.policy_role.keyids),
        "policy_threshold": root.policy_role.threshold,
        "provision_agents_with": str(keys.path / "root.json"),
    }
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    print(f"root version {root.version}, expires {doc['expires_at']}")
    print(f"  root keys   (threshold {root.root_role.threshold}): {' '.join(doc['root_keys'])}")
    print(f"  policy keys (threshold {root.policy_role.threshold}): {' '.join(doc['policy_keys'])}")
    print(f"  provision agents with {doc['provision_agents_with']}")


# -- operator commands: the admin API of a running server ---------------------------------
EXIT_UNREACHABLE = 3
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
Handler = Callable[[AdminClient, argparse.Namespace], int]


class _Usage(Exception):
    """A usage or configuration problem found after parsing: exit 2."""


def _admin(args: argparse.Namespace) -> int:
    try:
        server = _server(args.server)
        credential = _credential(args.credential_file)
        client = AdminClient(
            server,
            credential,
            timeout_s=args.timeout,
            ca_file=Path(args.ca) if args.ca else None,
        )
    except (_Usage, LocalError) as exc:
        print(f"mgmt-stub: {_one_line(exc)}", file=sys.stderr)
        return 2
    handler: Handler = args.handler
    try:
        with client:
            return handler(client, args)
    except UnreachableError as exc:
        print(f"mgmt-stub: {_one_line(exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ApiError, LocalError) as exc:
        print(f"mgmt-stub: {_one_line(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug: still one line, never a traceback
        print(f"mgmt-stub: unexpected {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _server(text: str) -> str:
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise _Usage(f"--server {text!r} is not an http:// or https:// URL")
    if (
        url.scheme == "http"
        and url.hostname not in _LOOPBACK
        and not url.hostname.startswith("127.")
    ):
        print(
            f"mgmt-stub: warning: {url.hostname} is reached over plain HTTP; "
            f"the credential crosses the network unencrypted",
            file=sys.stderr,
        )
    return text


def _credential(path_text: str | None) -> str:
    path_text = path_text or os.environ.get("MGMT_STUB_CREDENTIAL_FILE")
    if path_text:
        path = Path(path_text)
        credential = read_credential(path)
        with contextlib.suppress(OSError):
            if path.stat().st_mode & 0o077:
                print(
                    f"mgmt-stub: warning: credential file {path} is readable by other users "
                    f"(chmod 600 it)",
                    file=sys.stderr,
                )
        return credential
    env = os.environ.get("MGMT_STUB_CREDENTIAL")
    if env:
        return check_credential(env, source="MGMT_STUB_CREDENTIAL")
    raise _Usage(
        "no operator credential: give --credential-file FILE, or set MGMT_STUB_CREDENTIAL_FILE "
        "or MGMT_STUB_CREDENTIAL (the server writes the first one to DATA/admin.credential)"
    )


# -- argument types ------------------------------------------------------------------------
def _labels_arg(text: str) -> dict[str, str]:
    """``k=v,k=v`` as labels; an empty string is no labels."""
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not is_valid_label(key, value):
            raise argparse.ArgumentTypeError(f"{pair!r} is not a valid key=value label")
        labels[key] = value
    return labels


def _selector_arg(text: str) -> dict[str, str]:
    labels = _labels_arg(text)
    if not labels:
        raise argparse.ArgumentTypeError("a selector needs at least one key=value label")
    return labels


def _cluster_arg(text: str) -> str:
    if not is_valid_cluster_id(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid cluster id")
    return text


def _param_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


def _ttl_arg(text: str) -> int:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds."""
    match = re.fullmatch(r"(\d{1,9})([smhd]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3600s, 24h or 7d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * unit


def _selector_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _selector_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.cluster is not None:
        return {"cluster_id": args.cluster}
    return {"labels": args.selector}


# -- output --------------------------------------------------------------------------------
def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def _cell(value: Any) -> str:
    """One table cell; control characters from the server never reach the terminal."""
    if value is None or value == "":
        return "-"
    if isinstance(value, dict):
        value = _selector_text({str(k): str(v) for k, v in value.items()})
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text or "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _fields(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key + ':':<{width + 1}} {_cell(value)}")


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


def _describe_selector(selector: dict[str, Any]) -> str:
    if selector.get("cluster_id"):
        return f"cluster {selector['cluster_id']}"
    return _selector_text(selector.get("labels") or {}) or "all"


def _describe_strategy(strategy: dict[str, Any]) -> str:
    parts = []
    if strategy.get("canary_labels"):
        parts.append(f"canary {_selector_text(strategy['canary_labels'])}")
    if strategy.get("canary_percent"):
        parts.append(f"canary {strategy['canary_percent']}%")
    if strategy.get("max_unavailable"):
        parts.append(f"max unavailable {strategy['max_unavailable']}")
    if strategy.get("max_unavailable_percent"):
        parts.append(f"max unavailable {strategy['max_unavailable_percent']}%")
    return ", ".join(parts) or "all at once"


def _describe_rollout(rollout: dict[str, Any]) -> str:
    return (
        f"rollout {rollout['id']} {rollout['state']} ({rollout['phase']}): revision "
        f"{_cell(rollout['from_revision'])} -> {rollout['to_revision']}, "
        f"{rollout['done']}/{rollout['members']} done"
    )


# -- handlers: one admin call (or a few) each, then text or JSON ---------------------------
def _profile_put(client: AdminClient, args: argparse.Namespace) -> int:
    row = client.put_profile(args.name, profile_body(Path(args.source)))
    if args.json:
        _print_json(row)
    elif row.get("changed"):
        print(f"profile {row['name']} version {row['version']} stored")
    else:
        print(f"profile {row['name']} unchanged at version {row['version']}")
    return 0


def _profile_list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.profiles()
    if args.json:
        _print_json(rows)
        return 0
    _table(
        ("NAME", "VERSION", "CREATED", "BY", "DESCRIPTION"),
        [
            (r["name"], r["version"], r["created_at"], r["created_by"], r["description"])
            for r in rows
        ],
        "no profiles",
    )
    return 0


def _profile_show(client: AdminClient, args: argparse.Namespace) -> int:
    doc = client.profile(args.name)
    if args.json:
        _print_json(doc)
        return 0
    print(f"profile {_cell(doc['name'])}")
    _table(
        ("VERSION", "CREATED", "BY", "SHA256", "DESCRIPTION"),
        [
            (
                v["version"],
                v["created_at"],
                v["created_by"],
                v["content_sha256"][:16],
                v["description"],
            )
            for v in doc["versions"]
        ],
        "no versions",
    )
    return 0


def _cluster_list(client: AdminClient, args: argparse.Namespace) -> int:
    selector = _selector_text(args.selector) if args.selector else None
    doc = client.clusters(selector)
    if args.json:
        _print_json(doc)
        return 0
    _table(
        ("ID", "HEALTH", "CONNECTIVITY", "DESIRED", "REPORTED", "DRIFT", "LAST CONTACT"),
        [
            (
                r["id"],
                r.get("health"),
                r.get("connectivity"),
                r.get("desired"),
                r.get("reported"),
                r.get("drift"),
                _age(r.get("last_contact_age_s")),
            )
            for r in doc["clusters"]
        ],
        "no clusters" + (f" match {selector}" if selector else ""),
    )
    return 0


def _cluster_show(client: AdminClient, args: argparse.Namespace) -> int:
    row = client.cluster(args.cluster_id)
    if args.json:
        _print_json(row)
        return 0
    _fields(
        [
            ("cluster", row["id"]),
            ("labels", row.get("labels")),
            ("health", row.get("health")),
            ("summary", row.get("summary")),
            ("connectivity", row.get("connectivity")),
            ("last contact", _age(row.get("last_contact_age_s"))),
            ("assignment", row.get("assignment")),
            ("desired revision", row.get("desired")),
            ("reported revision", row.get("reported")),
            ("drift", row.get("drift")),
            ("enrolled at", row.get("enrolled_at")),
            ("agent key", "yes" if row.get("agent_key") else "no"),
            ("events", row.get("events")),
        ]
    )
    if row.get("recent_events"):
        print("\nrecent events")
        _table(
            ("TIME", "TYPE", "VIA", "ID"),
            [(e["time"], e["type"], e["via"], e["id"]) for e in row["recent_events"]],
            "",
        )
    if row.get("actions"):
        print("\nactions")
        _action_table(row["actions"])
    return 0


def _cluster_register(client: AdminClient, args: argparse.Namespace) -> int:
    row = client.register_cluster(args.cluster_id, args.labels, args.agent_key)
    if args.json:
        _print_json(row)
        return 0
    desired = f", desired revision {row['desired']}" if row.get("desired") else ""
    print(f"cluster {row['id']} registered{desired}")
    return 0


def _cluster_agent_key(client: AdminClient, args: argparse.Namespace) -> int:
    row = client.set_agent_key(args.cluster_id, args.agent_key)
    if args.json:
        _print_json(row)
        return 0
    print(f"cluster {row['id']}: status reports are now checked with the new agent key")
    return 0


def _cluster_label(client: AdminClient, args: argparse.Namespace) -> int:
    row = client.set_labels(args.cluster_id, args.labels)
    if args.json:
        _print_json(row)
        return 0
    print(f"cluster {row['id']} labels now {_cell(row.get('labels'))}")
    return 0


def _cluster_revoke(client: AdminClient, args: argparse.Namespace) -> int:
    doc = client.revoke_cluster(args.cluster_id)
    if args.json:
        _print_json(doc)
        return 0
    print(f"cluster {doc['cluster_id']}: {doc['revoked_credentials']} credential(s) revoked")
    return 0


def _assign_put(client: AdminClient, args: argparse.Namespace) -> int:
    rollout: dict[str, Any] = {}
    if args.canary is not None:
        rollout["canary"] = {"labels": args.canary}
    if args.canary_percent is not None:
        rollout["canary_percent"] = args.canary_percent
    if args.max_unavailable is not None:
        rollout["max_unavailable"] = args.max_unavailable
    if args.max_unavailable_percent is not None:
        rollout["max_unavailable_percent"] = args.max_unavailable_percent
    body = {
        "profile": args.profile,
        "selector": _selector_body(args),
        "priority": args.priority,
        "rollout": rollout,
    }
    row = client.put_assignment(args.name, body)
    if args.json:
        _print_json(row)
        return 0
    _print_assignment(row)
    return 0


def _print_assignment(row: dict[str, Any]) -> None:
    print(
        f"assignment {row['name']}: profile {row['profile']} to "
        f"{_describe_selector(row['selector'])}, priority {row['priority']}, "
        f"{row['members']} member(s), stable revision {_cell(row.get('stable'))}"
    )
    print(f"  rollout strategy: {_describe_strategy(row.get('strategy') or {})}")
    if row.get("rollout"):
        print(f"  {_describe_rollout(row['rollout'])}")


def _assign_list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.assignments()
    if args.json:
        _print_json(rows)
        return 0
    _table(
        ("NAME", "PROFILE", "SELECTOR", "PRIORITY", "MEMBERS", "STABLE", "ROLLOUT"),
        [
            (
                r["name"],
                r["profile"],
                _describe_selector(r["selector"]),
                r["priority"],
                r["members"],
                r.get("stable"),
                f"{r['rollout']['id']} {r['rollout']['state']}" if r.get("rollout") else None,
            )
            for r in rows
        ],
        "no assignments",
    )
    return 0


def _assign_show(client: AdminClient, args: argparse.Namespace) -> int:
    row = client.assignment(args.name)
    if args.json:
        _print_json(row)
    else:
        _print_assignment(row)
    return 0


def _assign_delete(client: AdminClient, args: argparse.Namespace) -> int:
    client.delete_assignment(args.name)
    if args.json:
        _print_json({"deleted": args.name})
    else:
        print(f"assignment {args.name} deleted")
    return 0


def _rollout_list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.rollouts()
    if args.json:
        _print_json(rows)
        return 0
    _table(
        ("ID", "ASSIGNMENT", "STATE", "PHASE", "FROM", "TO", "DONE", "UPDATED"),
        [
            (
                r["id"],
                r["assignment"],
                r["state"],
                r["phase"],
                r.get("from_revision"),
                r["to_revision"],
                f"{r['done']}/{r['members']}",
                r["updated_at"],
            )
            for r in rows
        ],
        "no rollouts",
    )
    return 0


def _rollout_control(client: AdminClient, args: argparse.Namespace) -> int:
    row = client.control_rollout(args.rollout_id, args.action)
    if args.json:
        _print_json(row)
    else:
        print(_describe_rollout(row))
    return 0


def _token_create(client: AdminClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"uses": args.uses, "ttl_s": args.ttl, "labels": args.labels}
    if args.cluster is not None:
        body["cluster_id"] = args.cluster
    if args.description:
        body["description"] = args.description
    row = client.create_token(body)
    if args.json:
        _print_json(row)
    else:
        print(row["token"])  # alone on stdout, so it can be piped
    bound = f" for cluster {row['cluster_id']}" if row.get("cluster_id") else ""
    print(
        f"mgmt-stub: bootstrap token {row['id']}{bound}: {row['max_uses']} use(s), expires "
        f"{row['expires_at']}; it is not shown again",
        file=sys.stderr,
    )
    return 0


def _token_state(row: dict[str, Any]) -> str:
    if row.get("revoked_at"):
        return "revoked"
    if row["uses"] >= row["max_uses"]:
        return "used up"
    if row["expires_at"] <= format_time(SystemClock().now()):
        return "expired"
    return "active"


def _token_list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.tokens()
    if args.json:
        _print_json(rows)
        return 0
    _table(
        ("ID", "STATE", "USES", "EXPIRES", "CLUSTER", "LABELS", "BY", "DESCRIPTION"),
        [
            (
                r["id"],
                _token_state(r),
                f"{r['uses']}/{r['max_uses']}",
                r["expires_at"],
                r.get("cluster_id"),
                r.get("labels"),
                r["created_by"],
                r.get("description"),
            )
            for r in rows
        ],
        "no bootstrap tokens",
    )
    return 0


def _token_revoke(client: AdminClient, args: argparse.Namespace) -> int:
    client.revoke_token(args.token_id)
    if args.json:
        _print_json({"revoked": args.token_id})
    else:
        print(f"bootstrap token {args.token_id} revoked")
    return 0


def _operator_create(client: AdminClient, args: argparse.Namespace) -> int:
    doc = client.create_operator(args.name, args.role)
    if args.json:
        _print_json(doc)
    else:
        print(doc["credential"])  # alone on stdout, so it can be piped into a 0600 file
    print(
        f"mgmt-stub: operator {doc['name']} created with role {doc['role']}; "
        f"the credential is not shown again",
        file=sys.stderr,
    )
    return 0


def _operator_list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.operators()
    if args.json:
        _print_json(rows)
        return 0
    _table(
        ("NAME", "ROLE", "CREATED", "REVOKED"),
        [(r["name"], r["role"], r["created_at"], r.get("revoked_at")) for r in rows],
        "no operators",
    )
    return 0


def _operator_revoke(client: AdminClient, args: argparse.Namespace) -> int:
    client.revoke_operator(args.name)
    if args.json:
        _print_json({"revoked": args.name})
    else:
        print(f"operator {args.name} revoked")
    return 0


def _action_queue(client: AdminClient, args: argparse.Namespace) -> int:
    doc = client.queue_action(args.type, _selector_body(args), dict(args.param))
    if args.json:
        _print_json(doc)
        return 0
    clusters = ", ".join(_cell(a["cluster_id"]) for a in doc["actions"][:10])
    more = f" and {doc['queued'] - 10} more" if doc["queued"] > 10 else ""
    print(f"queued {args.type} for {doc['queued']} cluster(s): {clusters}{more}")
    return 0


def _action_table(rows: Sequence[dict[str, Any]]) -> None:
    _table(
        ("ID", "CLUSTER", "TYPE", "STATE", "CREATED", "BY", "RESULT"),
        [
            (
                r["id"][:12],
                r["cluster_id"],
                r["type"],
                r["state"],
                r["created_at"],
                r["created_by"],
                (r.get("result") or {}).get("detail"),
            )
            for r in rows
        ],
        "no actions",
    )


def _action_list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.actions(args.cluster)
    if args.json:
        _print_json(rows)
    else:
        _action_table(rows)
    return 0


def _bundle_export(client: AdminClient, args: argparse.Namespace) -> int:
    exported = client.export_bundle(
        Path(args.output),
        cluster_id=args.cluster,
        selector=_selector_text(args.selector) if args.selector else None,
    )
    doc = {
        "path": str(exported.path),
        "revision": exported.revision,
        "sha256": exported.sha256,
        "size": exported.size,
    }
    if args.json:
        _print_json(doc)
    else:
        print(f"exported revision {exported.revision} to {exported.path} ({exported.size} bytes)")
    return 0


def _bundle_list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.bundles()
    if args.json:
        _print_json(rows)
        return 0
    _table(
        ("REVISION", "ASSIGNMENT", "PROFILE", "TARGET", "CREATED", "EXPIRES", "REASON"),
        [
            (
                r["revision"],
                r["assignment"],
                f"{r['profile']} v{r['profile_version']}",
                _describe_selector(r.get("target") or {}),
                r["created_at"],
                r["expires_at"],
                r.get("reason"),
            )
            for r in rows
        ],
        "no bundles",
    )
    return 0


def _ingest(client: AdminClient, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_REPORT_BYTES + 1)  # never an endless read (/dev/zero, a disk)
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_REPORT_BYTES:
        raise LocalError(f"{path} is larger than a status report may be ({MAX_REPORT_BYTES} bytes)")
    doc = client.ingest(data)
    receipt = base64.b64decode(doc.pop("receipt"))
    written: Path | None = None
    if not args.no_receipt:
        written = (
            Path(args.receipt)
            if args.receipt
            else path.with_name(receipt_file_name(str(doc["cluster_id"])))
        )
        try:
            atomic_write(written, receipt, mode=0o644)
        except OSError as exc:
            raise LocalError(
                f"report {doc['report_id']} ingested, but its receipt was not written to "
                f"{written}: {exc.strerror or exc}; write it with: mgmt-stub cluster receipt "
                f"{doc['cluster_id']} -o FILE"
            ) from None
    doc["receipt_file"] = str(written) if written else None
    if args.json:
        _print_json(doc)
        return 0
    again = "" if doc.get("new_report") else " (seen before)"
    print(
        f"report {_cell(doc['report_id'])} from cluster {_cell(doc['cluster_id'])}{again}: "
        f"{doc['accepted']} new event(s), {doc['duplicates']} duplicate(s)"
    )
    if written:
        print(f"receipt written to {written}: take it back to the site with the next bundle")
    return 0


def _cluster_receipt(client: AdminClient, args: argparse.Namespace) -> int:
    receipt = client.receipt(args.cluster_id)
    output = Path(args.output)
    try:
        atomic_write(output, receipt, mode=0o644)
    except OSError as exc:
        raise LocalError(f"cannot write {output}: {exc.strerror or exc}") from None
    if args.json:
        _print_json({"cluster_id": args.cluster_id, "path": str(output), "size": len(receipt)})
    else:
        print(f"receipt for {args.cluster_id} written to {output}")
    return 0


def _audit(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.audit(args.limit)
    if args.json:
        _print_json(rows)
        return 0
    _table(  # oldest first, like a log
        ("TIME", "ACTOR", "ACTION", "SUBJECT", "DETAIL"),
        [
            (
                r["at"],
                r["actor"],
                r["action"],
                r["subject"],
                json.dumps(r.get("detail") or {}, sort_keys=True, separators=(",", ":")),
            )
            for r in reversed(rows)
        ],
        "no audit records",
    )
    return 0


# -- the parsers of the operator commands --------------------------------------------------
def _admin_parsers(areas: Any, bundle: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("server")
    group.add_argument(
        "--server",
        default=os.environ.get("MGMT_STUB_URL") or DEFAULT_SERVER,
        metavar="URL",
        help="admin API (default $MGMT_STUB_URL, else %(default)s)",
    )
    group.add_argument(
        "--credential-file",
        metavar="FILE",
        help="operator credential file (default $MGMT_STUB_CREDENTIAL_FILE, "
        "else the credential in $MGMT_STUB_CREDENTIAL)",
    )
    group.add_argument("--ca", metavar="FILE", help="CA bundle to verify an HTTPS server with")
    group.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="per-request timeout in seconds (default %(default)s)",
    )
    group.add_argument("--json", action="store_true", help="print JSON for machines")

    def command(parent: Any, name: str, handler: Handler, help_text: str) -> Any:
        sub = parent.add_parser(name, help=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    def actions(name: str, help_text: str) -> Any:
        return areas.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)

    def target(sub: Any, *, required: bool = True) -> None:
        which = sub.add_mutually_exclusive_group(required=required)
        which.add_argument("--selector", type=_selector_arg, metavar="K=V,..")
        which.add_argument("--cluster", type=_cluster_arg, metavar="ID")

    profile = actions("profile", "profiles on the server")
    put = command(
        profile, "put", _profile_put, "upload a profile folder (a new version if changed)"
    )
    put.add_argument("name")
    put.add_argument("--from", dest="source", required=True, metavar="DIR", help="profile folder")
    command(profile, "list", _profile_list, "profiles and their latest version")
    command(profile, "show", _profile_show, "a profile's versions").add_argument("name")

    cluster = actions("cluster", "clusters known to the server")
    listing = command(cluster, "list", _cluster_list, "clusters, health and revisions")
    listing.add_argument("--selector", type=_selector_arg, metavar="K=V,..")
    command(cluster, "show", _cluster_show, "one cluster in detail").add_argument("cluster_id")
    register = command(cluster, "register", _cluster_register, "make an air-gapped cluster known")
    register.add_argument("cluster_id", type=_cluster_arg)
    register.add_argument("--labels", type=_labels_arg, default={}, metavar="K=V,..")
    register.add_argument("--agent-key", metavar="B64", help="its Ed25519 public key (base64)")
    label = command(cluster, "label", _cluster_label, "replace a cluster's labels")
    label.add_argument("cluster_id")
    label.add_argument("labels", type=_labels_arg, metavar="K=V,..", help="'' removes all")
    agent_key = command(
        cluster,
        "agent-key",
        _cluster_agent_key,
        "replace the key its status reports are checked with (admin)",
    )
    agent_key.add_argument("cluster_id")
    agent_key.add_argument("agent_key", metavar="B64", help="edge-agent agent-key prints it")
    receipt = command(
        cluster, "receipt", _cluster_receipt, "write the receipt for its ingested status reports"
    )
    receipt.add_argument("cluster_id")
    receipt.add_argument("-o", "--output", required=True, metavar="FILE")
    command(cluster, "revoke", _cluster_revoke, "revoke a cluster's credentials").add_argument(
        "cluster_id"
    )

    assign = actions("assign", "assignments of profiles to clusters")
    put = command(assign, "put", _assign_put, "create or change an assignment")
    put.add_argument("name")
    put.add_argument("--profile", required=True)
    target(put)
    put.add_argument("--priority", type=int, default=0, help="higher wins (default 0)")
    canary = put.add_mutually_exclusive_group()
    canary.add_argument("--canary", type=_selector_arg, metavar="K=V,..", help="canary group")
    canary.add_argument("--canary-percent", type=int, metavar="N")
    unavailable = put.add_mutually_exclusive_group()
    unavailable.add_argument("--max-unavailable", type=int, metavar="N")
    unavailable.add_argument("--max-unavailable-percent", type=int, metavar="N")
    command(assign, "list", _assign_list, "assignments")
    command(assign, "show", _assign_show, "one assignment").add_argument("name")
    command(assign, "delete", _assign_delete, "delete an assignment").add_argument("name")

    rollout = actions("rollout", "staged rollouts")
    command(rollout, "list", _rollout_list, "rollouts")
    for verb in ("pause", "resume", "rollback"):
        sub = command(rollout, verb, _rollout_control, f"{verb} a rollout")
        sub.add_argument("rollout_id", type=int, metavar="ID")

    token = actions("token", "bootstrap tokens for enrollment")
    create = command(token, "create", _token_create, "create a token (printed once on stdout)")
    create.add_argument("--uses", type=int, default=1, help="enrollments allowed (default 1)")
    create.add_argument(
        "--ttl", type=_ttl_arg, default=86400, help="lifetime: 3600s, 24h, 7d (default 24h)"
    )
    create.add_argument("--cluster", type=_cluster_arg, metavar="ID", help="only this cluster id")
    create.add_argument("--labels", type=_labels_arg, default={}, metavar="K=V,..")
    create.add_argument("--description", default="")
    command(token, "list", _token_list, "bootstrap tokens")
    command(token, "revoke", _token_revoke, "revoke a token").add_argument("token_id", metavar="ID")

    operator = actions("operator", "operator credentials")
    create = command(operator, "create", _operator_create, "create an operator (credential once)")
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    command(operator, "list", _operator_list, "operators")
    command(operator, "revoke", _operator_revoke, "revoke an operator").add_argument("name")

    action = actions("action", "one-off actions for agents")
    queue = command(action, "queue", _action_queue, "queue an action for clusters")
    queue.add_argument("type", help="resync, collect-diagnostics, reconcile-now, ...")
    target(queue)
    queue.add_argument("--param", type=_param_arg, action="append", default=[], metavar="K=V")
    listed = command(action, "list", _action_list, "actions, newest first")
    listed.add_argument("--cluster", metavar="ID")

    export = command(bundle, "export", _bundle_export, "download a cluster's signed bundle")
    target(export)
    export.add_argument("-o", "--output", required=True, metavar="FILE")
    command(bundle, "list", _bundle_list, "bundles the server has built")

    ingest = areas.add_parser("ingest", help="upload a signed status report", parents=[common])
    ingest.set_defaults(handler=_ingest)
    ingest.add_argument("file", metavar="FILE")
    where = ingest.add_mutually_exclusive_group()
    where.add_argument(
        "--receipt",
        metavar="OUT",
        help="where to write the signed receipt the site needs back "
        "(default: edge-receipt-CLUSTER.receipt beside FILE)",
    )
    where.add_argument("--no-receipt", action="store_true", help="do not write the receipt")
    audit = areas.add_parser("audit", help="the audit log (admin)", parents=[common])
    audit.set_defaults(handler=_audit)
    audit.add_argument("--limit", type=int, default=50, help="newest N records (default 50)")


if __name__ == "__main__":
    sys.exit(main())
