"""TLS and proxies: the agent verifies the server against the configured CA bundle and goes
through the configured (or environment's) HTTPS proxy; the real stub serves HTTPS.

A throwaway PKI is made per module (``tests.connectproxy.make_pki``). The server is named
``127.0.0.2`` where a proxy must be used: the agent always reaches ``127.0.0.1``/``localhost``
directly, and the test proxy relays every CONNECT to the stub whatever host it names.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, PROFILES
from tests.connectproxy import ConnectProxy, make_pki
from tests.stub_process import StubProcess
from tests.sync_site import SyncSite, make_sync_site

RETRY = "retry_base_s: 0.5, retry_max_s: 2, timeout_s: 3, wait_s: 2"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"), ["127.0.0.1", "127.0.0.2", "localhost"])


@pytest.fixture(scope="module")
def stub(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, Path, Path]
) -> Iterator[StubProcess]:
    process = StubProcess.start(tmp_path_factory.mktemp("stub-tls"), tls=pki)
    try:
        process.put_profile("web", PROFILES / "hello-web")
        process.admin.put(
            "/v1/admin/assignments/everyone",
            json={"profile": "web", "selector": {"labels": {"region": "eu"}}},
        ).raise_for_status()
        yield process
    finally:
        process.stop()


def sync_once(site: SyncSite, env: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    result = subprocess.run(
        [str(BIN / "edge-agent"), "--config", str(site.config_path), "sync", "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return result.returncode, json.loads(result.stdout)


def policy_of(site: SyncSite) -> object:
    return json.loads(site.run("status", "--json").stdout)["policy"]


def test_https_verified_against_the_configured_ca(
    tmp_path: Path, stub: StubProcess, pki: tuple[Path, Path, Path]
) -> None:
    site = make_sync_site(tmp_path / "a", stub, "tls-a", extra_sync=f"ca_bundle: {pki[0]}, {RETRY}")
    code, outcome = sync_once(site)
    assert code == 0 and outcome["result"] == "synced", outcome
    assert policy_of(site) is not None


@pytest.mark.parametrize("ca", ["system", "other"])
def test_a_server_the_ca_bundle_does_not_vouch_for_is_refused(
    tmp_path: Path, stub: StubProcess, ca: str
) -> None:
    extra = RETRY
    if ca == "other":
        other_ca, _, _ = make_pki(tmp_path / "other-pki", ["127.0.0.1"])
        extra = f"ca_bundle: {other_ca}, {RETRY}"
    site = make_sync_site(tmp_path / ca, stub, f"tls-{ca}", extra_sync=extra)
    code, outcome = sync_once(site)
    assert code == 5 and outcome["result"] == "unreachable"
    assert "certificate" in outcome["detail"].lower(), outcome["detail"]
    with site.open_store() as store:
        assert store.sync_credential() is None  # the token never reached an unverified server
    assert policy_of(site) is None


def test_the_configured_https_proxy_is_used_end_to_end(
    tmp_path: Path, stub: StubProcess, pki: tuple[Path, Path, Path]
) -> None:
    with ConnectProxy(stub.port) as proxy:
        site = make_sync_site(
            tmp_path / "p",
            stub,
            "tls-proxy",
            server=f"https://127.0.0.2:{stub.port}",
            extra_sync=f"ca_bundle: {pki[0]}, proxy: '{proxy.url}', {RETRY}",
        )
        code, outcome = sync_once(site)
        assert code == 0 and outcome["result"] == "synced", outcome
        assert proxy.targets and set(proxy.targets) == {f"127.0.0.2:{stub.port}"}
        with site.open_store() as store:
            secret = (store.sync_credential() or {})["credential"]
        seen = b"".join(proxy.heads)
        assert secret.encode() not in seen and b"Authorization" not in seen


def test_the_environment_proxy_is_honoured(
    tmp_path: Path, stub: StubProcess, pki: tuple[Path, Path, Path]
) -> None:
    with ConnectProxy(stub.port) as proxy:
        site = make_sync_site(
            tmp_path / "e",
            stub,
            "tls-env",
            server=f"https://127.0.0.2:{stub.port}",
            extra_sync=f"ca_bundle: {pki[0]}, {RETRY}",
        )
        code, outcome = sync_once(site, {"HTTPS_PROXY": proxy.url, "NO_PROXY": ""})
        assert code == 0 and outcome["result"] == "synced", outcome
        assert proxy.targets
        # NO_PROXY naming the server: straight there (refused: the stub is on 127.0.0.1 only).
        before = len(proxy.targets)
        code, outcome = sync_once(site, {"HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.2"})
        assert code == 5 and len(proxy.targets) == before
