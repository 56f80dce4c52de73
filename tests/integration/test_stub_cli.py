"""The operator commands of ``mgmt-stub`` against the stub as a real process.

Every command runs the real console script as a subprocess, with the operator credential in a
0600 file named by ``--credential-file`` (never on the command line), and is judged by its exit
code, stdout and stderr: 0 with the answer, 1 with one ``mgmt-stub: DETAIL (HTTP STATUS)``
line when the server refuses, 2 for usage and a missing credential, 3 when no server answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from tests.conftest import BIN, PROFILES
from tests.stub_process import free_port

ENV = {k: v for k, v in os.environ.items() if not k.startswith("MGMT_STUB_")}


def mgmt(
    *args: str, credential: Path | None = None, server: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    options = [] if server is None else ["--server", server]
    if credential is not None:
        options += ["--credential-file", str(credential)]
    return subprocess.run(
        [str(BIN / "mgmt-stub"), *args, *options],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, **env},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.args, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgmt-stub: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def secret_file(path: Path, credential: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(credential + "\n")
    return path


def test_operator_round_trip(stub, tmp_path: Path) -> None:
    admin = secret_file(tmp_path / "admin.credential", stub.admin_credential)
    outputs: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = mgmt(*args, credential=admin, server=stub.url)
        outputs.extend((result.stdout, result.stderr))
        return result

    assert ok(run("profile", "put", "hello-web", "--from", str(PROFILES / "hello-web"))) == (
        "profile hello-web version 1 stored\n"
    )
    again = ok(run("profile", "put", "hello-web", "--from", str(PROFILES / "hello-web")))
    assert again == "profile hello-web unchanged at version 1\n"
    assert "hello-web" in ok(run("profile", "list"))

    put = ok(run("assign", "put", "eu", "--profile", "hello-web", "--selector", "region=eu"))
    assert put.startswith("assignment eu: profile hello-web to region=eu")

    # The token alone on stdout: piped straight into an enrollment.
    created = run("token", "create", "--uses", "1", "--ttl", "1h", "--labels", "region=eu")
    token = ok(created).strip()
    assert created.stdout == token + "\n" and token.startswith("ebt_")
    assert token not in created.stderr and "not shown again" in created.stderr
    enrolled = stub.client(token).post("/v1/enroll", json={"cluster_id": "site-1"})
    assert enrolled.status_code == 201, enrolled.text
    agent = stub.client(enrolled.json()["credential"])

    table = ok(run("cluster", "list")).splitlines()
    assert table[0].split()[:3] == ["ID", "HEALTH", "CONNECTIVITY"]
    assert table[1].split()[0] == "site-1" and len(table) == 2
    listed = json.loads(ok(run("cluster", "list", "--selector", "region=eu", "--json")))
    (cluster,) = listed["clusters"]
    assert (cluster["id"], cluster["desired"], cluster["labels"]) == ("site-1", 1, {"region": "eu"})
    assert ok(run("cluster", "list", "--selector", "region=us")) == "no clusters match region=us\n"

    queued = ok(run("action", "queue", "resync", "--cluster", "site-1", "--param", "why=test"))
    assert queued == "queued resync for 1 cluster(s): site-1\n"
    (pending,) = agent.get("/v1/agent/actions").json()["actions"]
    assert (pending["type"], pending["params"]) == ("resync", {"why": "test"})

    out = tmp_path / "usb"
    out.mkdir()
    exported = ok(run("bundle", "export", "--cluster", "site-1", "-o", str(out / "site-1.bundle")))
    assert exported.startswith(f"exported revision 1 to {out / 'site-1.bundle'}")
    assert [p.name for p in out.iterdir()] == ["site-1.bundle"]  # no temporary file left
    config = tmp_path / "agent.yaml"
    config.write_text(
        "cluster_id: site-1\nlabels: {region: eu}\n"
        f"paths: {{state_dir: {tmp_path / 'state'}, initial_root: {stub.keys / 'root.json'}}}\n"
    )
    verified = subprocess.run(
        [str(BIN / "edge-agent"), "--config", str(config), "verify", str(out / "site-1.bundle")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stderr

    audit = json.loads(ok(run("audit", "--json")))
    actions = {(r["actor"], r["action"], r["subject"]) for r in audit}
    assert {
        ("admin", "profile.put", "hello-web"),
        ("admin", "assignment.put", "eu"),
        ("admin", "action.queue", "cluster site-1"),
        ("admin", "bundle.export", "site-1"),
    } <= actions
    assert any(a == "token.create" for _, a, _ in actions)
    assert any(a == "cluster.enroll" and s == "site-1" for _, a, s in actions)
    assert "profile.put" in ok(run("audit", "--limit", "10"))
    assert all(stub.admin_credential not in text for text in outputs)


def test_refusals_are_one_line_with_the_server_detail(stub, tmp_path: Path) -> None:
    admin = secret_file(tmp_path / "admin.credential", stub.admin_credential)
    created = mgmt(
        "operator", "create", "watcher", "--role", "viewer", credential=admin, server=stub.url
    )
    viewer = secret_file(tmp_path / "viewer.credential", ok(created).strip())
    assert ok(mgmt("cluster", "list", credential=viewer, server=stub.url)) == "no clusters\n"

    refused = one_line_error(mgmt("token", "create", credential=viewer, server=stub.url), 1)
    assert refused == "mgmt-stub: role 'viewer' may not do this; it needs 'admin' (HTTP 403)"

    missing = one_line_error(mgmt("assign", "show", "nope", credential=admin, server=stub.url), 1)
    assert missing == "mgmt-stub: no assignment 'nope' (HTTP 404)"
    garbage = tmp_path / "report.json"
    garbage.write_bytes(b"not a report")
    assert "(HTTP 422)" in one_line_error(
        mgmt("ingest", str(garbage), credential=admin, server=stub.url), 1
    )
    # Environment defaults: the URL and the credential itself.
    env = {"MGMT_STUB_URL": stub.url, "MGMT_STUB_CREDENTIAL": stub.admin_credential}
    assert "watcher" in ok(mgmt("operator", "list", **env))
    wrong = {**env, "MGMT_STUB_CREDENTIAL": "eop_0000000000000000_" + "A" * 43}
    assert "(HTTP 401)" in one_line_error(mgmt("operator", "list", **wrong), 1)


def test_no_server_exits_3_naming_the_url(tmp_path: Path) -> None:
    credential = secret_file(tmp_path / "c", "eop_0000000000000000_" + "A" * 43)
    refused_url = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(mgmt("cluster", "list", credential=credential, server=refused_url), 3)
    assert refused_url in line
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        slow = mgmt("cluster", "list", "--timeout", "0.5", credential=credential, server=url)
        assert url in one_line_error(slow, 3) and "timed out" in slow.stderr


def test_missing_credential_and_local_refusals(tmp_path: Path, profile_with_artifact) -> None:
    line = one_line_error(mgmt("cluster", "list", server="http://127.0.0.1:1"), 2)
    assert "no operator credential" in line and "--credential-file" in line
    absent = one_line_error(mgmt("cluster", "list", credential=tmp_path / "nothing"), 2)
    assert f"cannot read credential file {tmp_path / 'nothing'}" in absent

    credential = secret_file(tmp_path / "c", "eop_0000000000000000_" + "A" * 43)
    artifacts = profile_with_artifact(b"image bytes")
    line = one_line_error(
        mgmt("profile", "put", "p", "--from", str(artifacts), credential=credential), 1
    )
    assert "artifacts" in line and "bundle build" in line
    usage = mgmt("token", "create", "--ttl", "soon", credential=credential)
    assert usage.returncode == 2 and "--ttl" in usage.stderr
