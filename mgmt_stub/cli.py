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
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent.bundle.model import is_valid_cluster_id, is_valid_label
from edge_agent.clock import SystemClock, format_time
from edge_agent.errors import EdgeAgentError
from mgmt_stub.builder import ProfileError, build_bundle
from mgmt_stub.keys import KeyDirectory, KeyStoreError
from mgmt_stub.storage import StorageError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
