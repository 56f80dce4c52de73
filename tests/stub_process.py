"""The management stub as a real process on loopback, for tests.

``StubProcess.start(tmp)`` creates a key directory, starts ``mgmt-stub serve`` on a free
port, waits for ``/healthz``, and reads the initial admin credential the server wrote.
``admin`` is an httpx client carrying that credential; ``agent(cluster_id)`` enrolls a
cluster through the real API and returns a client carrying its own credential.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def profile_body(folder: Path) -> dict[str, Any]:
    """The JSON body ``PUT /v1/admin/profiles/NAME`` takes, read from a profile folder."""
    spec = yaml.safe_load((folder / "profile.yaml").read_text())
    return {
        "description": spec.get("description", ""),
        "settings": spec.get("settings", {}),
        "layers": [
            {
                "name": layer["name"],
                "manifests": {
                    p.name: p.read_text() for p in sorted((folder / layer["path"]).glob("*.y*ml"))
                },
            }
            for layer in spec["layers"]
        ],
    }


@dataclass
class StubProcess:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    admin_credential: str
    clients: list[httpx.Client] = field(default_factory=list)
    ca: Path | None = None  # set when serving HTTPS: the CA that signed its certificate

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        port: int | None = None,
        extra: tuple[str, ...] = (),
        tls: tuple[Path, Path, Path] | None = None,
    ) -> StubProcess:
        """Start it; ``tls`` (ca, cert, key) serves HTTPS with that certificate."""
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "keys").exists():
            subprocess.run(
                [str(BIN / "mgmt-stub"), "keys", "init", "--keys", str(root / "keys")],
                check=True,
                capture_output=True,
            )
        port = port or free_port()
        with (root / "stub.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    str(BIN / "mgmt-stub"),
                    "serve",
                    "--data",
                    str(root / "data"),
                    "--keys",
                    str(root / "keys"),
                    "--listen",
                    f"127.0.0.1:{port}",
                    *(("--tls-cert", str(tls[1]), "--tls-key", str(tls[2])) if tls else ()),
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                scheme = "https" if tls else "http"
                verify: Any = ssl.create_default_context(cafile=str(tls[0])) if tls else True
                url = f"{scheme}://127.0.0.1:{port}/healthz"
                if httpx.get(url, timeout=1, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"stub did not start: {(root / 'stub.log').read_text()[-2000:]}")
            time.sleep(0.05)
        credential = (root / "data" / "admin.credential").read_text().strip()
        return cls(root, port, process, credential, ca=tls[0] if tls else None)

    def client(self, credential: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        verify: Any = ssl.create_default_context(cafile=str(self.ca)) if self.ca else True
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30, verify=verify)
        self.clients.append(client)
        return client

    @property
    def admin(self) -> httpx.Client:
        return self.client(self.admin_credential)

    def put_profile(self, name: str, folder: Path) -> dict[str, Any]:
        response = self.admin.put(f"/v1/admin/profiles/{name}", json=profile_body(folder))
        response.raise_for_status()
        return dict(response.json())

    def token(self, **body: Any) -> str:
        response = self.admin.post("/v1/admin/tokens", json=body)
        response.raise_for_status()
        return str(response.json()["token"])

    def enroll(self, cluster_id: str, labels: dict[str, str] | None = None, **extra: Any) -> str:
        """Enroll through the real API with a fresh one-use token; return the credential."""
        token = self.token(uses=1)
        response = self.client(token).post(
            "/v1/enroll", json={"cluster_id": cluster_id, "labels": labels or {}, **extra}
        )
        response.raise_for_status()
        return str(response.json()["credential"])

    def agent(self, cluster_id: str, labels: dict[str, str] | None = None) -> httpx.Client:
        return self.client(self.enroll(cluster_id, labels))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the real ``mgmt-stub`` operator command against this server as admin (the
        credential in a 0600 file, never on the command line)."""
        credential = self.root / "admin.credential"
        if not credential.exists():
            fd = os.open(credential, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.admin_credential + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MGMT_STUB_")}
        return subprocess.run(
            [str(BIN / "mgmt-stub"), *args, "--server", self.url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "MGMT_STUB_CREDENTIAL_FILE": str(credential)},
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def restart(self) -> None:
        self.stop()
        fresh = StubProcess.start(self.root, port=self.port)
        self.process = fresh.process

    def dump(self, path: str) -> Any:
        return json.loads(self.admin.get(path).text)


def kill_all(stubs: list[StubProcess]) -> None:
    for stub in stubs:
        if stub.process.poll() is None:
            os.kill(stub.process.pid, signal.SIGKILL)
            stub.process.wait()
