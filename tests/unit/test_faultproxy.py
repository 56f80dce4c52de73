"""The fault proxy does what each mode says, against a real HTTP upstream on loopback.

The upstream is ``http.server`` in a thread answering ``GET /`` with a known 100 KB body
(HTTP/1.1, keep-alive). Clients are httpx (what the agent uses) and plain sockets where a test
needs exact bytes or a connection it controls.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import HTTPCORE_SOCKET_LEAKS, wait_for
from tests.faultproxy import FaultProxy, Mode

pytestmark = HTTPCORE_SOCKET_LEAKS

BODY = bytes(range(256)) * 400  # 102,400 bytes, every offset recognisable
REQUEST = b"GET / HTTP/1.1\r\nHost: upstream\r\n\r\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Upstream(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets are what these tests cause


@pytest.fixture
def upstream() -> Iterator[int]:
    server = _Upstream(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def proxy(upstream: int) -> Iterator[FaultProxy]:
    with FaultProxy(upstream) as opened:
        yield opened


def connect(proxy: FaultProxy, timeout_s: float = 3.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout_s)


def read_response(sock: socket.socket) -> bytes:
    """Read one whole response (headers and a Content-Length body) from a keep-alive socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {len(data)} bytes of headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {len(body)} of {length} body bytes"
        body += chunk
    assert body == BODY
    return head + b"\r\n\r\n" + body


def read_until_end(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    """Everything the socket yields until EOF or an error, and the error."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError as exc:
        return data, exc
    return data, None


def test_pass_forwards_both_ways_and_counts_exact_bytes(proxy: FaultProxy) -> None:
    assert proxy.mode is Mode.PASS
    assert httpx.get(proxy.url, timeout=3).content == BODY
    with connect(proxy) as sock:
        sock.sendall(REQUEST)
        response = read_response(sock)
        sock.sendall(REQUEST)  # keep-alive: same connection, second response
        response += read_response(sock)
    proxy.wait_idle()
    assert proxy.connections == 2
    record = proxy.log[1]
    assert (record.bytes_up, record.bytes_down) == (2 * len(REQUEST), len(response))
    assert proxy.bytes_down == proxy.log[0].bytes_down + len(response)
    assert proxy.bytes_up == proxy.log[0].bytes_up + 2 * len(REQUEST)


def test_down_refusing_stops_listening_until_the_link_heals(proxy: FaultProxy) -> None:
    proxy.down(refuse=True)
    with pytest.raises(httpx.ConnectError):
        httpx.get(proxy.url, timeout=1)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    assert proxy.connections == 0
    proxy.pass_()  # listens again on the same port
    assert httpx.get(proxy.url, timeout=3).content == BODY
    assert proxy.connections == 1


def test_down_without_refusing_accepts_then_resets(proxy: FaultProxy) -> None:
    proxy.down(refuse=False)
    # Where the RST surfaces depends on timing: at connect, write or read; after a failed write
    # httpcore still reads, finds EOF and says "Server disconnected without sending a response".
    with pytest.raises(
        (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
    ):
        httpx.get(proxy.url, timeout=1)
    try:  # the RST can beat connect() back to the caller
        with connect(proxy) as sock:
            data, error = read_until_end(sock)
    except ConnectionResetError as exc:
        data, error = b"", exc
    assert (data, type(error)) == (b"", ConnectionResetError)
    assert proxy.wait_connections(2) == 2
    assert proxy.bytes_up == proxy.bytes_down == 0


def test_down_resets_live_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(REQUEST)
        read_response(sock)
        proxy.down(refuse=False)
        assert type(read_until_end(sock)[1]) is ConnectionResetError


def test_blackhole_accepts_and_never_answers(proxy: FaultProxy) -> None:
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(proxy.url, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 3
    assert proxy.connections == 1
    assert proxy.bytes_up == proxy.bytes_down == 0


def test_blackhole_freezes_a_live_connection_until_the_mode_changes(proxy: FaultProxy) -> None:
    with connect(proxy, timeout_s=0.3) as sock:
        proxy.wait_connections(1)  # accepted in pass mode: a live connection, not a new one
        proxy.blackhole()
        sock.sendall(REQUEST)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(3)
        proxy.pass_()
        read_response(sock)


def test_delay_adds_latency_to_every_response(proxy: FaultProxy) -> None:
    proxy.delay(0.3)
    started = time.monotonic()
    assert httpx.get(proxy.url, timeout=3).content == BODY
    assert time.monotonic() - started >= 0.3
    with connect(proxy) as sock:  # keep-alive: delayed, then back to pass from the next chunk
        proxy.wait_connections(2)
        sock.sendall(REQUEST)
        started = time.monotonic()
        read_response(sock)
        assert time.monotonic() - started >= 0.3
        proxy.pass_()
        sock.sendall(REQUEST)
        read_response(sock)
    assert proxy.mode is Mode.PASS


def test_reset_after_resets_mid_body(proxy: FaultProxy) -> None:
    proxy.reset_after(30_000)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(proxy.url, timeout=3)
    with connect(proxy) as sock:
        sock.sendall(REQUEST)
        data, error = read_until_end(sock)
    assert type(error) is ConnectionResetError
    assert len(data) <= 30_000
    proxy.wait_idle()
    assert [record.bytes_down for record in proxy.log] == [30_000, 30_000]


def test_truncate_after_closes_cleanly_mid_body(proxy: FaultProxy) -> None:
    proxy.truncate_after(30_000)
    with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|without sending complete"):
        httpx.get(proxy.url, timeout=3)
    with connect(proxy) as sock:
        sock.sendall(REQUEST)
        data, error = read_until_end(sock)
    assert (len(data), error) == (30_000, None)
    proxy.wait_idle()
    assert proxy.log[1].bytes_down == 30_000


def test_a_mode_change_reaches_a_live_keep_alive_connection(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(REQUEST)
        first = read_response(sock)
        proxy.truncate_after(10)
        sock.sendall(REQUEST)
        data, error = read_until_end(sock)
    assert (data, error) == (first[:10], None)


def test_cut_drops_live_connections_and_keeps_the_mode(proxy: FaultProxy) -> None:
    with httpx.Client(base_url=proxy.url, timeout=3) as client:
        assert client.get("/").content == BODY
        proxy.cut()
        assert client.get("/").content == BODY  # the pooled connection died: a new one
    assert proxy.connections == 2
    proxy.delay(0.5)
    with connect(proxy) as sock:
        sock.sendall(REQUEST)
        proxy.wait_connections(3)
        time.sleep(0.05)  # the request is forwarded; the response is held in the delay
        proxy.cut()
        data, error = read_until_end(sock)
    assert (data, type(error)) == (b"", ConnectionResetError)
    assert proxy.mode is Mode.DELAY
    assert proxy.live == 0


def test_wait_connections_counts_attempts(proxy: FaultProxy) -> None:
    proxy.down(refuse=False)

    def attempts() -> None:
        for _ in range(3):
            with contextlib.suppress(ConnectionResetError), connect(proxy):
                pass

    thread = threading.Thread(target=attempts)
    thread.start()
    try:
        assert proxy.wait_connections(3, timeout_s=3) == 3
    finally:
        thread.join()
    with pytest.raises(TimeoutError, match="expected 4 connections"):
        proxy.wait_connections(4, timeout_s=0.1)
    proxy.wait_idle()
    log = proxy.log
    assert [(r.bytes_up, r.bytes_down) for r in log] == [(0, 0)] * 3
    assert log[0].accepted_at <= log[1].accepted_at <= log[2].accepted_at


def test_wait_idle_waits_for_live_connections_to_close(proxy: FaultProxy) -> None:
    with connect(proxy):
        proxy.wait_connections(1)
        with pytest.raises(TimeoutError, match="expected no live connections"):
            proxy.wait_idle(timeout_s=0.1)
    proxy.wait_idle()
    assert proxy.live == 0


def test_bad_arguments_are_refused(proxy: FaultProxy) -> None:
    for call in (proxy.delay, proxy.reset_after, proxy.truncate_after):
        with pytest.raises(ValueError, match=">= 0"):
            call(-1)


def test_close_leaves_no_thread_or_socket_behind(upstream: int) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def proxy_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("faultproxy-")]

    before = fds()
    with FaultProxy(upstream) as proxy:
        live = connect(proxy)
        live.sendall(REQUEST)
        read_response(live)
        held = connect(proxy)
        proxy.blackhole()
        blackholed = connect(proxy)
        proxy.wait_connections(3)
        assert len(proxy_threads()) == 1
    proxy.close()  # idempotent
    assert proxy_threads() == []
    with live, held, blackholed:
        for sock in (live, held, blackholed):
            assert read_until_end(sock) == (b"", None)  # closed by the proxy
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    wait_for(lambda: fds() == before, timeout_s=3)  # the upstream's handlers close theirs too
    assert proxy.live == 0
    with pytest.raises(RuntimeError, match="closed"):
        proxy.pass_()
