"""The ``sync:`` section: optional (absent = air-gapped), strict, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import SyncConfig, load_config
from edge_agent.errors import ConfigError

BASE = "cluster_id: site-1\npaths: {initial_root: root.json, state_dir: state}\n"


def load(tmp_path: Path, sync_text: str) -> SyncConfig | None:
    path = tmp_path / "config.yaml"
    path.write_text(BASE + sync_text, encoding="utf-8")
    return load_config(path).sync


def refused(tmp_path: Path, sync_text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, sync_text)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "config.yaml") in message
    return message


def test_absent_means_air_gapped(tmp_path: Path) -> None:
    assert load(tmp_path, "") is None


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    sync = load(tmp_path, "sync: {server: 'https://mgmt.example.net/edge/'}\n")
    assert sync == SyncConfig(server="https://mgmt.example.net/edge")
    assert (sync.timeout_s, sync.wait_s, sync.proxy, sync.ca_bundle) == (10.0, 55, None, None)
    full = load(
        tmp_path,
        "sync:\n"
        "  server: https://mgmt.example.net:8443\n"
        "  ca_bundle: ca.pem\n"
        "  proxy: http://proxy.example:3128\n"
        "  timeout_s: 2.5\n"
        "  wait_s: 300\n"
        "  enroll_token_file: /etc/edge-agent/enroll.token\n",
    )
    assert full is not None
    assert full.ca_bundle == tmp_path / "ca.pem"
    assert full.enroll_token_file == Path("/etc/edge-agent/enroll.token")
    assert (full.proxy, full.timeout_s, full.wait_s) == ("http://proxy.example:3128", 2.5, 300)


@pytest.mark.parametrize(
    "server", ["http://127.0.0.1:8700", "http://localhost:8700", "http://[::1]:8700"]
)
def test_plain_http_is_allowed_to_loopback(tmp_path: Path, server: str) -> None:
    sync = load(tmp_path, f"sync: {{server: '{server}'}}\n")
    assert sync is not None and sync.server == server


@pytest.mark.parametrize(
    ("server", "fragment"),
    [
        ("http://mgmt.example.net", "plain http is allowed only to"),
        ("http://10.0.0.5:8700", "use https for 10.0.0.5"),
        ("ftp://mgmt.example.net", "must be an https URL"),
        ("mgmt.example.net", "must be an https URL"),
        ("https://user:pw@mgmt.example.net", "must not carry a user or password"),
        ("https://mgmt.example.net/?token=x", "must not have a query"),
        ("https://mgmt.example.net:99999", "not a valid URL"),
        (42, "must be an https URL"),
    ],
)
def test_a_bad_server_is_refused(tmp_path: Path, server: object, fragment: str) -> None:
    text = f"'{server}'" if isinstance(server, str) else str(server)
    message = refused(tmp_path, f"sync: {{server: {text}}}\n")
    assert "sync.server" in message and fragment in message
    assert "pw" not in message.replace("password", "")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("sync: https://mgmt.example.net\n", "sync must be a mapping"),
        ("sync: {}\n", "sync.server is required"),
        ("sync: {server: 'https://m.example', servre: x}\n", "unknown key sync.'servre'"),
        ("sync: {server: 'https://m.example', timeout_s: 0}\n", "sync.timeout_s"),
        ("sync: {server: 'https://m.example', timeout_s: true}\n", "sync.timeout_s"),
        ("sync: {server: 'https://m.example', timeout_s: '10'}\n", "sync.timeout_s"),
        ("sync: {server: 'https://m.example', wait_s: 301}\n", "sync.wait_s"),
        ("sync: {server: 'https://m.example', wait_s: 5.5}\n", "sync.wait_s"),
        ("sync: {server: 'https://m.example', ca_bundle: 3}\n", "sync.ca_bundle must be a path"),
        ("sync: {server: 'https://m.example', enroll_token_file: ''}\n", "sync.enroll_token_file"),
        ("sync: {server: 'https://m.example', proxy: 'socks5://p:1'}\n", "sync.proxy"),
    ],
)
def test_wrong_keys_and_types_are_refused(tmp_path: Path, body: str, fragment: str) -> None:
    assert fragment in refused(tmp_path, body)


def test_a_bad_proxy_is_refused_without_quoting_it(tmp_path: Path) -> None:
    message = refused(tmp_path, "sync: {server: 'https://m.example', proxy: 'ftp://u:s3cret@p'}\n")
    assert "sync.proxy" in message and "s3cret" not in message
