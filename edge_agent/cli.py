"""``edge-agent``: argv → config → one call → text or JSON → exit code. No decisions here.

Exit codes (docs/cli.md is the reference):

    verify / import / watch     0 ok, 1 bundle rejected, 2 usage or configuration error,
                                4 state store error (nothing was changed)
    enroll                      0 enrolled, 1 refused by the server, 2 usage or configuration
                                error (also: already enrolled without --force), 4 state store
                                error, 5 the server did not answer
    run                         0 stopped, 2 configuration error, 4 state store error
    sync                        0 ran (or stopped), 1 refused by the server (--once), 2 usage or
                                configuration error (also: no sync section), 4 state store
                                error, 5 the server did not answer (--once)
    status                      0 healthy, 1 degraded, 2 failing, 3 not initialised
    export-status               0 written, 2 usage or configuration error, 4 state store error,
                                6 the folder is missing, read-only or full (nothing recorded)
    receipt                     0 checked (whether or not a report was waiting on it),
                                1 the receipt does not verify or is for another cluster,
                                2 usage or configuration error, 4 state store error
    agent-key                   0 printed, 2 configuration error, 4 state store error
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent.bundle.trust import initial_trust, load_initial_root
from edge_agent.bundle.verify import VerifiedBundle
from edge_agent.clock import Clock, SystemClock
from edge_agent.config import (
    DEFAULT_PATH,
    AgentConfig,
    SyncConfig,
    check_server_url,
    load_config,
)
from edge_agent.errors import BundleError, ConfigError, StateError, TargetUnavailableError
from edge_agent.importer import import_file, verify_file
from edge_agent.logs import FORMATS as LOG_FORMATS
from edge_agent.logs import configure as configure_logs
from edge_agent.state import ROOT_MAX_BYTES, StateStore
from edge_agent.status import Verdict, render, report

log = logging.getLogger("edge_agent")

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_STATE = 4
EXIT_UNAVAILABLE = 5  # enforce --once: the target (cluster API, manifest folder) is unreachable
EXIT_NOT_WRITTEN = 6  # export-status: the report could not be written
EXIT_INTERNAL = 70  # a bug: an unexpected exception (sysexits EX_SOFTWARE)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logs(
        logging.INFO
        if args.command in ("watch", "run")
        or (args.command in ("enforce", "sync") and not args.once)
        or args.verbose
        else logging.CRITICAL,
        fmt=args.log_format,
    )
    if not args.verbose:
        # A line per HTTP request or scheduler run is noise in the journal: our own modules
        # log one line per outcome. -v shows them.
        for chatty in ("httpx", "httpcore", "apscheduler"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    clock = SystemClock()
    as_json = getattr(args, "json", False)
    try:
        config = load_config(Path(args.config))
        if args.command == "status":
            return _status(config, clock, as_json=args.json)
        if args.command == "verify":
            return _verify(config, Path(args.file), clock, as_json=args.json)
        if args.command == "import":
            return _import(config, Path(args.file), clock, as_json=args.json)
        if args.command == "enforce":
            return _enforce(config, clock, once=args.once, as_json=args.json)
        if args.command == "enroll":
            return _enroll(config, clock, args)
        if args.command == "sync":
            return _sync(config, clock, once=args.once, as_json=args.json)
        if args.command == "run":
            return _run(Path(args.config), clock)
        if args.command == "hold":
            return _hold(config, clock, args.reason, as_json=args.json)
        if args.command == "release":
            return _release(config, clock, as_json=args.json)
        if args.command == "export-status":
            return _export_status(config, Path(args.folder), clock, as_json=args.json)
        if args.command == "receipt":
            return _receipt(config, Path(args.file), clock, as_json=args.json)
        if args.command == "agent-key":
            return _agent_key(config, clock, as_json=args.json)
        return _watch(config, clock)
    except ConfigError as exc:
        _fail(str(exc), as_json=as_json, result="config-error")
        return EXIT_USAGE
    except BundleError as exc:
        _fail(f"rejected: {exc}", as_json=as_json, result="rejected", code=exc.code.value)
        return EXIT_REJECTED
    except TargetUnavailableError as exc:
        _fail(f"target unavailable: {exc}", as_json=as_json, result="target-unavailable")
        return EXIT_UNAVAILABLE
    except StateError as exc:
        _fail(f"state store: {exc}", as_json=as_json, result="state-error")
        return Verdict.FAILING.value if args.command == "status" else EXIT_STATE
    except Exception as exc:  # a bug; still one line and a distinct exit code, never a traceback
        log.debug("internal error", exc_info=True)
        _fail(
            f"internal error: {type(exc).__name__}: {exc}", as_json=as_json, result="internal-error"
        )
        return Verdict.FAILING.value if args.command == "status" else EXIT_INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Keep this cluster on its signed desired state."
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("EDGE_AGENT_CONFIG", str(DEFAULT_PATH)),
        help="agent configuration file (default: $EDGE_AGENT_CONFIG or %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("EDGE_AGENT_LOG_FORMAT", "text")
        if os.environ.get("EDGE_AGENT_LOG_FORMAT") in LOG_FORMATS
        else "text",
        help="one line per event: text (default; $EDGE_AGENT_LOG_FORMAT) or json",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="verify a bundle file; change nothing")
    verify.add_argument("file")
    verify.add_argument("--json", action="store_true")
    imp = commands.add_parser("import", help="verify a bundle file and make it the policy in force")
    imp.add_argument("file")
    imp.add_argument("--json", action="store_true")
    status = commands.add_parser(
        "status", help="show the policy in force, trust and recent imports"
    )
    status.add_argument("--json", action="store_true")
    commands.add_parser("watch", help="import bundles that appear in the configured drop folders")
    enforce = commands.add_parser("enforce", help="keep the target on the policy in force")
    enforce.add_argument("--once", action="store_true", help="run one reconcile cycle and exit")
    enforce.add_argument("--json", action="store_true", help="with --once: the cycle as JSON")
    hold = commands.add_parser(
        "hold", help="pause applying new revisions on this site (they are verified and kept)"
    )
    hold.add_argument("--reason", required=True, help="why (shown in status, sent to management)")
    hold.add_argument("--json", action="store_true")
    release = commands.add_parser(
        "release", help="lift the hold; apply what waits, if its time has come"
    )
    release.add_argument("--json", action="store_true")
    export = commands.add_parser(
        "export-status",
        help="write a signed status report (health, queued events, imports) into a folder",
    )
    export.add_argument("folder", metavar="DIR", help="where to write it (a USB stick, say)")
    export.add_argument("--json", action="store_true")
    receipt = commands.add_parser(
        "receipt", help="take management's receipt for status reports: their events are delivered"
    )
    receipt.add_argument("file")
    receipt.add_argument("--json", action="store_true")
    agent_key = commands.add_parser(
        "agent-key",
        help="print this agent's public key (mgmt-stub cluster register --agent-key)",
    )
    agent_key.add_argument("--json", action="store_true")
    commands.add_parser(
        "run",
        help="the daemon: enforce, sync and watch drop folders in one process (systemd notify)",
    )
    sync = commands.add_parser(
        "sync", help="keep in step with the management server (sync section of the config)"
    )
    sync.add_argument("--once", action="store_true", help="run one sync cycle and exit")
    sync.add_argument("--json", action="store_true", help="with --once: the outcome as JSON")
    enroll = commands.add_parser(
        "enroll", help="enroll with the management server and keep the credential"
    )
    enroll.add_argument("--server", help="management server URL (default: sync.server)")
    token = enroll.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file", help="file holding the bootstrap token (default: sync.enroll_token_file)"
    )
    token.add_argument(
        "--token",
        dest="read_stdin",
        type=_stdin_only,
        metavar="-",
        help="'-': read the bootstrap token from stdin (never the token itself: ps shows it)",
    )
    enroll.add_argument("--force", action="store_true", help="enroll again when already enrolled")
    enroll.add_argument("--json", action="store_true")
    return parser


def _stdin_only(value: str) -> bool:
    if value != "-":  # the message must not echo the value: it may be the token itself
        raise argparse.ArgumentTypeError(
            "only '-' (read stdin) is accepted; never put the token on the command line"
        )
    return True


def _open_store(config: AgentConfig, clock: Clock) -> StateStore:
    store = StateStore.open(config.state_dir, snapshot_path=config.status_snapshot)
    try:
        if not store.is_provisioned():
            try:
                store.provision(_initial_root(config), now=clock.now())
            except BundleError as exc:
                raise ConfigError(f"initial root {config.initial_root}: {exc}") from None
    except BaseException:
        store.close()
        raise
    return store


def _initial_root(config: AgentConfig) -> bytes:
    try:
        return config.initial_root.read_bytes()
    except OSError as exc:
        raise ConfigError(f"initial root {config.initial_root}: {exc.strerror or exc}") from None


def _verify(config: AgentConfig, path: Path, clock: Clock, *, as_json: bool) -> int:
    trust = None
    if (config.state_dir / "store").is_dir():
        with StateStore.open(config.state_dir, snapshot_path=None) as store:
            trust = store.trust() if store.is_provisioned() else None
    if trust is None:  # not yet provisioned: verify against the provisioned root, creating nothing
        try:
            trust = initial_trust(
                load_initial_root(_initial_root(config), max_bytes=ROOT_MAX_BYTES)
            )
        except BundleError as exc:
            raise ConfigError(f"initial root {config.initial_root}: {exc}") from None
    bundle = verify_file(path, trust=trust, config=config, clock=clock)
    _emit(_summary("valid", bundle), as_json, f"valid: {_describe(bundle)}")
    return EXIT_OK


def _import(config: AgentConfig, path: Path, clock: Clock, *, as_json: bool) -> int:
    with _open_store(config, clock) as store:
        result = import_file(path, store=store, config=config, clock=clock)
    outcome = "already in force" if result.outcome == "already-in-force" else "now in force"
    _emit(
        _summary(result.outcome, result.bundle),
        as_json,
        f"revision {result.bundle.metadata.revision} {outcome} ({result.bundle.metadata.bundle_id})",
    )
    return EXIT_OK


def _status(config: AgentConfig, clock: Clock, *, as_json: bool) -> int:
    store_dir = config.state_dir / "store"
    try:
        nothing_yet = not store_dir.exists() and not config.status_snapshot.exists()
    except OSError as exc:
        raise StateError(f"cannot look at {config.state_dir}: {exc.strerror or exc}") from None
    if nothing_yet:
        view: dict[str, Any] = {
            "policy": None,
            "previous_policy": None,
            "trust": None,
            "imports": [],
        }
        source = f"nothing yet at {config.state_dir}"
    elif os.access(store_dir, os.W_OK):
        with StateStore.open(config.state_dir, snapshot_path=None) as store:
            view, source = store.view(), f"state store {store_dir}"
    else:
        # Another user (no access to the private store): read the world-readable snapshot.
        try:
            view = json.loads(config.status_snapshot.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read the snapshot {config.status_snapshot}: {exc}") from None
        source = f"snapshot {config.status_snapshot}"
    doc = report(
        view,
        cluster_id=config.cluster_id,
        labels=config.labels,
        source=source,
        now=clock.now(),
        sync_server=config.sync.server if config.sync else None,
        site_tz=config.tzinfo,
    )
    print(json.dumps(doc, indent=2, sort_keys=True) if as_json else render(doc))
    return Verdict[doc["verdict"].upper().replace("-", "_")].value


def _watch(config: AgentConfig, clock: Clock) -> int:
    from edge_agent.usb import DROP_SUFFIXES, DropHandler
    from edge_agent.watch import DropWatcher

    if not config.drop_folders:
        raise ConfigError(f"config: drop_folders is empty; nothing to watch ({config.state_dir})")
    store = _open_store(config, clock)

    watcher = DropWatcher(
        config.drop_folders,
        DropHandler(store=store, config=config, clock=clock),
        suffixes=DROP_SUFFIXES,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        watcher.request_stop()  # lock-free: no new offer, even in the middle of a scan
        stop.set()  # wakes run()'s wait at once

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    log.info("watching %s", ", ".join(config.drop_folders))
    try:
        watcher.run(stop)  # starts the watcher; stop-aware from the first scan
    finally:
        watcher.stop()
        store.close()
    return EXIT_OK


def _enforce(config: AgentConfig, clock: Clock, *, once: bool, as_json: bool) -> int:
    from edge_agent.enforcer import Enforcer, build_target, run_cycle

    target = build_target(config)
    with _open_store(config, clock) as store:
        if once:
            summary = run_cycle(store, target, clock, config)
            if summary is None:
                _emit(
                    {"result": "no-policy"}, as_json, "no policy in force yet; nothing to enforce"
                )
            else:
                _emit(summary, as_json, summary["line"])
            return EXIT_OK
        enforcer = Enforcer(store, target, clock, config=config)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        log.info("enforcing onto %s", target.name)
        enforcer.run(stop)
    return EXIT_OK


def _hold(config: AgentConfig, clock: Clock, reason: str, *, as_json: bool) -> int:
    from edge_agent.control import hold

    text = " ".join(reason.split())
    if not text or len(text) > 300 or not text.isprintable():
        raise ConfigError("hold: --reason must be 1-300 printable characters")
    with _open_store(config, clock) as store:
        hold(store, text, clock)
        held = store.hold() or {}
    _emit(
        {"result": "held", "reason": text, "since": held.get("since")},
        as_json,
        f"held since {held.get('since')}: new revisions are verified and kept, not applied "
        "(edge-agent release lifts it)",
    )
    return EXIT_OK


def _release(config: AgentConfig, clock: Clock, *, as_json: bool) -> int:
    from edge_agent.control import release

    with _open_store(config, clock) as store:
        released, applied, waiting = release(store, config, clock)
    if applied is not None:
        text = f"released; revision {applied} applied"
    elif waiting is not None:
        when = f" (at {waiting.next_at.isoformat()})" if waiting.next_at else ""
        text = f"released; the pending revision is {waiting.reason}{when}"
    else:
        text = "released; nothing was pending" if released else "there was no hold"
    _emit(
        {
            "result": "released" if released else "not-held",
            "applied": applied,
            "waiting": waiting.reason if waiting else None,
            "applies_at": waiting.next_at.isoformat() if waiting and waiting.next_at else None,
        },
        as_json,
        text,
    )
    return EXIT_OK


def _run(config_path: Path, clock: Clock) -> int:
    from edge_agent.daemon import Daemon

    return Daemon(config_path, clock, lambda config: _open_store(config, clock)).run()


def _sync(config: AgentConfig, clock: Clock, *, once: bool, as_json: bool) -> int:
    from edge_agent.sync.engine import SyncEngine

    if config.sync is None:
        raise ConfigError("sync: the config has no sync section (this site is air-gapped)")
    with _open_store(config, clock) as store, store.sole("sync"):
        engine = SyncEngine(config, store, clock)
        try:
            if once:
                engine.recover_interrupted()
                outcome = engine.cycle()
                _emit(outcome.to_json(), as_json, f"{outcome.result}: {outcome.detail}")
                if outcome.result == "state-error":
                    return EXIT_STATE
                if outcome.result == "refused":
                    return EXIT_REJECTED
                return EXIT_UNAVAILABLE if outcome.result == "unreachable" else EXIT_OK
            stop = threading.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
            log.info("syncing with %s", config.sync.server)
            engine.run(stop)
        finally:
            engine.close()
    return EXIT_OK


def _enroll(config: AgentConfig, clock: Clock, args: argparse.Namespace) -> int:
    from edge_agent.sync.client import SyncClient
    from edge_agent.sync.errors import Refused, SyncError
    from edge_agent.usb import agent_public_key

    sync = config.sync
    server = args.server or (sync.server if sync else None)
    if server is None:
        raise ConfigError("enroll: no server: give --server or set sync.server in the config")
    try:
        server = check_server_url(server)
    except ValueError as exc:
        raise ConfigError(f"enroll: --server {exc}") from None
    token = _read_token(args, sync)
    with _open_store(config, clock) as store:
        held = store.sync_credential()
        if held is not None and not args.force:
            raise ConfigError(
                f"already enrolled as {held.get('cluster_id')} with {held.get('server')} "
                f"(credential {held.get('credential_id')}); --force to enroll again"
            )
        settings = sync if sync is not None else SyncConfig(server=server)
        try:
            with SyncClient(
                server,
                ca_bundle=settings.ca_bundle,
                proxy=settings.proxy,
                timeout_s=settings.timeout_s,
                clock=clock,
            ) as client:
                credential = client.enroll(
                    token,
                    config.cluster_id,
                    config.labels,
                    agent_key=base64.b64encode(agent_public_key(store)).decode("ascii"),
                )
        except Refused as exc:
            _fail(f"refused: {exc}", as_json=args.json, result="refused")
            return EXIT_REJECTED
        except SyncError as exc:
            _fail(f"server unavailable: {exc}", as_json=args.json, result="unreachable")
            return EXIT_UNAVAILABLE
        store.set_sync_credential(credential.to_state(server, config.cluster_id, clock.now()))
    log.info("enrolled %s with %s", config.cluster_id, server)
    _emit(
        {
            "result": "enrolled",
            "cluster_id": config.cluster_id,
            "credential_id": credential.credential_id,
            "server": server,
        },
        args.json,
        f"enrolled {config.cluster_id} with {server} (credential {credential.credential_id})",
    )
    return EXIT_OK


def _read_token(args: argparse.Namespace, sync: SyncConfig | None) -> str:
    """The bootstrap token from --token-file, stdin (--token -) or sync.enroll_token_file.

    Messages name where the token came from, never what it holds.
    """
    from edge_agent.sync.engine import MAX_TOKEN_BYTES, check_token, read_token_file

    try:
        if args.read_stdin:
            return check_token(sys.stdin.read(MAX_TOKEN_BYTES + 1), "stdin")
        path = args.token_file or (sync.enroll_token_file if sync is not None else None)
        if path is None:
            raise ConfigError(
                "enroll: no bootstrap token: give --token-file FILE, --token - (stdin) "
                "or set sync.enroll_token_file"
            )
        return read_token_file(Path(path))
    except ValueError as exc:
        raise ConfigError(f"enroll: {exc}") from None


def _summary(result: str, bundle: VerifiedBundle) -> dict[str, Any]:
    meta = bundle.metadata
    return {
        "result": result,
        "bundle_id": meta.bundle_id,
        "revision": meta.revision,
        "digest": bundle.digest,
        "target": meta.target.to_json(),
        "layers": [{"name": layer.name, "objects": layer.object_count} for layer in bundle.layers],
        "artifacts": len(bundle.artifacts),
        "root_version": bundle.trust.root.root.version,
    }


def _describe(bundle: VerifiedBundle) -> str:
    meta = bundle.metadata
    layers = ", ".join(f"{layer.name} ({layer.object_count})" for layer in bundle.layers)
    return f"bundle {meta.bundle_id} revision {meta.revision} for {meta.target.describe()}; layers {layers}"


def _export_status(config: AgentConfig, folder: Path, clock: Clock, *, as_json: bool) -> int:
    from edge_agent.usb import ExportError, export_status

    with _open_store(config, clock) as store:
        try:
            exported = export_status(store, config, folder, clock)
        except ExportError as exc:
            _fail(str(exc), as_json=as_json, result="not-written")
            return EXIT_NOT_WRITTEN
    _emit(
        {
            "result": "written",
            "path": str(exported.path),
            "report_id": exported.report_id,
            "events": exported.events,
            "bytes": exported.size,
        },
        as_json,
        f"status report {exported.report_id} written to {exported.path} "
        f"({exported.events} queued events carried; they stay queued until management's "
        "receipt comes back)",
    )
    return EXIT_OK


def _receipt(config: AgentConfig, path: Path, clock: Clock, *, as_json: bool) -> int:
    from edge_agent.report import ReportError
    from edge_agent.usb import accept_receipt, read_receipt

    try:
        data = read_receipt(path)
    except OSError as exc:
        raise ConfigError(f"receipt {path} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    with _open_store(config, clock) as store:
        try:
            done = accept_receipt(store, config, data)
        except ReportError as exc:
            _fail(f"rejected: {exc}", as_json=as_json, result="rejected")
            return EXIT_REJECTED
    _emit(
        {"result": "accepted", "report_ids": done.report_ids, "delivered": done.delivered},
        as_json,
        f"receipt accepted: {len(done.report_ids)} reports acknowledged, "
        f"{done.delivered} queued events delivered"
        if done.report_ids
        else "receipt accepted: no report was waiting on it",
    )
    return EXIT_OK


def _agent_key(config: AgentConfig, clock: Clock, *, as_json: bool) -> int:
    from edge_agent.usb import agent_public_key

    with _open_store(config, clock) as store:
        public = base64.b64encode(agent_public_key(store)).decode("ascii")
    _emit({"cluster_id": config.cluster_id, "agent_key": public}, as_json, public)
    return EXIT_OK


def _emit(doc: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(doc, sort_keys=True) if as_json else text)


def _fail(message: str, *, as_json: bool, result: str, code: str | None = None) -> None:
    line = " ".join(message.split())
    if as_json:
        print(json.dumps({"result": result, "code": code, "error": line}, sort_keys=True))
    print(f"edge-agent: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
