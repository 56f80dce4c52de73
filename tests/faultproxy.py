"""A TCP fault-injection proxy for tests: the link between a client and a server, with faults.

``FaultProxy(upstream_port)`` listens on ``127.0.0.1`` on a free port and forwards every accepted
connection to ``127.0.0.1:upstream_port``. The test thread switches the proxy's mode at any time;
each switch is applied on the proxy's own thread before the call returns, so a test can act on it
at once::

    with FaultProxy(stub.port) as proxy:
        client = httpx.Client(base_url=proxy.url)
        proxy.reset_after(1000)      # the next response is reset after 1000 bytes
        proxy.pass_()                # the link is healthy again

Modes (:class:`Mode`), and what they do to new and to live connections:

- ``pass_()`` (the default): forward both ways, as fast as the link goes. If nothing listens
  upstream, the client's connection is reset, as a dead server's would be.
- ``down(refuse=True)``: stop listening, so ``connect()`` is refused; ``down(refuse=False)``: keep
  listening, accept and reset at once (RST, ``SO_LINGER`` 0; on loopback the reset can reach the
  client before its ``connect()`` returns, so it may raise there). Either way every live
  connection is reset: a server that is down holds no connections. Any other mode listens again
  on the same port.
- ``blackhole()``: a new connection is accepted and never answered (nothing reaches upstream;
  what the client sends is read and dropped) until the client gives up, :meth:`cut` or
  :meth:`close`. A live connection freezes: nothing is forwarded either way until the mode
  changes. "New" means accepted by the proxy after the switch, and a client's ``connect()`` can
  return before that: call :meth:`FaultProxy.wait_connections` first to make a connection live.
- ``delay(seconds)``: every chunk from upstream reaches the client ``seconds`` later than it
  arrived (latency, not a bandwidth limit: chunks in flight are pipelined). Applies to live
  connections from their next chunk.
- ``reset_after(n_bytes)``: forward the response until ``n_bytes`` went to the client, then reset
  the client connection (RST): a reset mid-body.
- ``truncate_after(n_bytes)``: forward ``n_bytes`` of the response, then close cleanly (FIN): a
  truncated body. For both, the count starts when the connection first forwards a chunk under
  that mode (at its start for a new connection).
- ``answer(responder)``: a fake server at the link, for faults only HTTP can express (a 500,
  a 429 with ``Retry-After``, a bundle tampered with on the way). Each new connection's first
  request head (and its ``Content-Length`` body) is read and given to ``responder(head)``,
  which returns the whole raw response to send (then the connection is closed cleanly: say
  ``Connection: close``), or None to forward that connection upstream as ``pass_`` would
  (the head included). Decided once per connection, on its first request.
- ``cut()`` is an event, not a mode: reset every live connection now; the mode is unchanged.

Counters, readable from any thread: :attr:`FaultProxy.connections` (accepted),
:attr:`FaultProxy.bytes_up` / :attr:`FaultProxy.bytes_down` (forwarded client->upstream and
upstream->client), :attr:`FaultProxy.log` (one :class:`ConnectionRecord` per accepted connection),
:meth:`FaultProxy.wait_connections` and :meth:`FaultProxy.wait_idle`. A client can read bytes
before the proxy counted them: call ``wait_idle()`` before asserting exact byte counts.

Invariants: every socket is owned by the proxy's private asyncio loop and touched only on its
thread; the test thread only submits calls and reads counters under a lock. :meth:`close` (or
leaving the ``with`` block) closes every socket, stops the loop and joins the thread; it is
idempotent. Linux only (``TIOCOUTQ``). Not here: HTTP awareness (faults count bytes, not messages), TLS, IPv6, bandwidth
shaping, faults on the request direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["ConnectionRecord", "FaultProxy", "Mode"]

HOST = "127.0.0.1"
CHUNK_BYTES = 65536
"""Largest chunk read from either side at once."""
QUEUE_CHUNKS = 64
"""Chunks held in flight per connection under ``delay`` before the proxy stops reading upstream."""
CALL_TIMEOUT_S = 10.0
"""How long a call from the test thread waits for the proxy's loop before failing loudly."""

_T = TypeVar("_T")


class Mode(enum.Enum):
    PASS = "pass"
    DOWN = "down"
    BLACKHOLE = "blackhole"
    DELAY = "delay"
    RESET_AFTER = "reset_after"
    TRUNCATE_AFTER = "truncate_after"
    ANSWER = "answer"


Responder = Callable[[bytes], bytes | None]


@dataclass(frozen=True, slots=True)
class _Setting:
    mode: Mode = Mode.PASS
    refuse: bool = False
    delay_s: float = 0.0
    limit_bytes: int = 0
    responder: Responder | None = None


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """One accepted connection, as seen at the time :attr:`FaultProxy.log` was read."""

    bytes_up: int
    """Bytes forwarded client -> upstream."""
    bytes_down: int
    """Bytes forwarded upstream -> client."""
    accepted_at: float
    """``time.monotonic()`` when the proxy accepted it."""
    closed: bool


class _Reset(Exception):
    """The connection is to end with an RST to the client."""


class _Finish(Exception):
    """The connection is to end cleanly (already half-closed towards the client)."""


@dataclass(eq=False, slots=True)
class _Connection:
    client: socket.socket
    accepted_at: float
    upstream: socket.socket | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    closed: bool = False
    rst: bool = False
    setting_seen: _Setting | None = None
    budget_base: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def _close_with_reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _drained(sock: socket.socket, timeout_s: float = 1.0) -> None:
    """Wait (bounded) until the kernel sent what we wrote: an RST drops unsent bytes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        except OSError:
            return
        if unsent == 0:
            return
        await asyncio.sleep(0.005)


def _close_cleanly(sock: socket.socket) -> None:
    # FIN first: close() with unread bytes in the receive buffer would send an RST instead.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sock.close()


class FaultProxy:
    """A TCP proxy from ``127.0.0.1:port`` to ``127.0.0.1:upstream_port`` with switchable faults."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._accepted = threading.Condition(self._lock)
        self._records: list[_Connection] = []
        self._bytes_up = 0
        self._bytes_down = 0
        self._setting = _Setting()
        self._closed = False
        self._live: set[_Connection] = set()
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = int(self._listener.getsockname()[1])
        self._accept_task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"faultproxy-{self.port}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self._stop_loop()
            raise

    # -- the test thread's side ------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._setting.mode

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._records)

    @property
    def live(self) -> int:
        """Connections accepted and not yet closed."""
        with self._lock:
            return sum(1 for record in self._records if not record.closed)

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._bytes_up

    @property
    def bytes_down(self) -> int:
        with self._lock:
            return self._bytes_down

    @property
    def log(self) -> list[ConnectionRecord]:
        with self._lock:
            return [
                ConnectionRecord(c.bytes_up, c.bytes_down, c.accepted_at, c.closed)
                for c in self._records
            ]

    def wait_connections(self, n: int, timeout_s: float = 5.0) -> int:
        """Wait until at least ``n`` connections were accepted; return the count.

        Raises ``TimeoutError`` if fewer than ``n`` arrived within ``timeout_s``.
        """
        with self._accepted:
            if not self._accepted.wait_for(lambda: len(self._records) >= n, timeout_s):
                raise TimeoutError(
                    f"fault proxy on port {self.port}: expected {n} connections within "
                    f"{timeout_s} s, found {len(self._records)}"
                )
            return len(self._records)

    def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Wait until every accepted connection is closed, so the counters are final.

        Raises ``TimeoutError`` if some are still open after ``timeout_s``.
        """
        with self._accepted:
            if not self._accepted.wait_for(lambda: all(c.closed for c in self._records), timeout_s):
                live = sum(1 for c in self._records if not c.closed)
                raise TimeoutError(
                    f"fault proxy on port {self.port}: expected no live connections within "
                    f"{timeout_s} s, found {live}"
                )

    def pass_(self) -> None:
        """Forward both ways (the default)."""
        self._set(_Setting())

    def down(self, *, refuse: bool = True) -> None:
        """Refuse connections (``refuse``) or accept and reset them; reset live ones."""
        self._set(_Setting(Mode.DOWN, refuse=refuse))

    def blackhole(self) -> None:
        """Accept and never answer; freeze live connections."""
        self._set(_Setting(Mode.BLACKHOLE))

    def delay(self, seconds: float) -> None:
        """Deliver every upstream->client chunk ``seconds`` late."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 s, got {seconds}")
        self._set(_Setting(Mode.DELAY, delay_s=seconds))

    def reset_after(self, n_bytes: int) -> None:
        """Forward ``n_bytes`` of the response, then reset the client connection."""
        if n_bytes < 0:
            raise ValueError(f"reset_after needs n_bytes >= 0, got {n_bytes}")
        self._set(_Setting(Mode.RESET_AFTER, limit_bytes=n_bytes))

    def truncate_after(self, n_bytes: int) -> None:
        """Forward ``n_bytes`` of the response, then close the client connection cleanly."""
        if n_bytes < 0:
            raise ValueError(f"truncate_after needs n_bytes >= 0, got {n_bytes}")
        self._set(_Setting(Mode.TRUNCATE_AFTER, limit_bytes=n_bytes))

    def answer(self, responder: Responder) -> None:
        """Answer each new connection's first request with ``responder(head)`` (or forward it
        when that returns None)."""
        self._set(_Setting(Mode.ANSWER, responder=responder))

    def cut(self) -> None:
        """Reset every live connection now; the mode stays as it is."""
        self._call(self._cut())

    def close(self) -> None:
        """Close every socket, stop the loop and join its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown())
        finally:
            self._stop_loop()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _set(self, setting: _Setting) -> None:
        self._call(self._apply(setting))

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        if not self._thread.is_alive():
            coroutine.close()
            raise RuntimeError(f"fault proxy on port {self.port} is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(CALL_TIMEOUT_S)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        if self._thread.is_alive():
            raise RuntimeError(f"fault proxy on port {self.port}: loop thread did not stop")
        self._loop.close()
        if self._listener is not None:  # only when _start never ran
            self._listener.close()
            self._listener = None

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Rebinding the same port after down(refuse=True) must not trip over TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        return listener

    # -- the loop's side: everything below runs on the proxy's thread -----------------------

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        self._start_accepting()

    def _start_accepting(self) -> None:
        if self._listener is None:
            self._listener = self._listen(self.port)
        self._accept_task = asyncio.get_running_loop().create_task(
            self._accept_loop(self._listener)
        )

    async def _stop_accepting(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _apply(self, setting: _Setting) -> None:
        self._setting = setting
        assert self._changed is not None
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if setting.mode is Mode.DOWN and setting.refuse:
            await self._stop_accepting()
        elif self._accept_task is None:
            self._start_accepting()
        if setting.mode is Mode.DOWN:
            await self._cut()

    async def _cut(self) -> None:
        tasks = []
        for connection in list(self._live):
            connection.rst = True
            if connection.task is not None:
                connection.task.cancel()
                tasks.append(connection.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _shutdown(self) -> None:
        await self._stop_accepting()
        tasks = [c.task for c in self._live if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(listener)
            client.setblocking(False)
            connection = _Connection(client, time.monotonic())
            with self._accepted:
                self._records.append(connection)
                self._accepted.notify_all()
            self._live.add(connection)
            connection.task = loop.create_task(self._serve(connection))

    async def _serve(self, connection: _Connection) -> None:
        setting = self._setting
        try:
            if setting.mode is Mode.DOWN:
                connection.rst = True
            elif setting.mode is Mode.BLACKHOLE:
                await self._swallow(connection.client)
            elif setting.mode is Mode.ANSWER:
                assert setting.responder is not None
                await self._answer(connection, setting.responder)
            else:
                await self._forward(connection)
        except _Reset:
            connection.rst = True
        except (_Finish, OSError):
            pass
        finally:
            self._live.discard(connection)
            if connection.upstream is not None:
                connection.upstream.close()
            if connection.rst:
                _close_with_reset(connection.client)
            else:
                _close_cleanly(connection.client)
            with self._accepted:
                connection.closed = True
                self._accepted.notify_all()

    async def _answer(self, connection: _Connection, responder: Responder) -> None:
        loop = asyncio.get_running_loop()
        received = b""
        while b"\r\n\r\n" not in received:
            data = await loop.sock_recv(connection.client, CHUNK_BYTES)
            if not data:
                return
            received += data
        head, _, body = received.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
        while len(body) < length:
            data = await loop.sock_recv(connection.client, CHUNK_BYTES)
            if not data:
                return
            body += data
        with self._lock:
            connection.bytes_up += len(received) + len(body)
            self._bytes_up += len(received) + len(body)
        response = responder(head + b"\r\n\r\n")
        if response is None:
            await self._forward(connection, initial=head + b"\r\n\r\n" + body)
            return
        await loop.sock_sendall(connection.client, response)
        with self._lock:
            connection.bytes_down += len(response)
            self._bytes_down += len(response)
        await _drained(connection.client)

    async def _swallow(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while await loop.sock_recv(client, CHUNK_BYTES):
            pass

    async def _forward(self, connection: _Connection, initial: bytes = b"") -> None:
        loop = asyncio.get_running_loop()
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        connection.upstream = upstream
        try:
            await loop.sock_connect(upstream, (HOST, self.upstream_port))
        except OSError as exc:
            raise _Reset from exc  # what a client of a dead server would see, one hop later
        if initial:
            await loop.sock_sendall(upstream, initial)
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        tasks = [
            loop.create_task(self._pump_up(connection)),
            loop.create_task(self._read_down(connection, queue)),
            loop.create_task(self._write_down(connection, queue)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _unfrozen(self) -> None:
        while self._setting.mode is Mode.BLACKHOLE:
            assert self._changed is not None
            await self._changed.wait()

    async def _pump_up(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        assert connection.upstream is not None
        while True:
            data = await loop.sock_recv(connection.client, CHUNK_BYTES)
            await self._unfrozen()
            if not data:
                connection.upstream.shutdown(socket.SHUT_WR)
                return
            await loop.sock_sendall(connection.upstream, data)
            with self._lock:
                connection.bytes_up += len(data)
                self._bytes_up += len(data)

    async def _read_down(
        self, connection: _Connection, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        assert connection.upstream is not None
        while True:
            data = await loop.sock_recv(connection.upstream, CHUNK_BYTES)
            setting = self._setting
            delay_s = setting.delay_s if setting.mode is Mode.DELAY else 0.0
            await queue.put((loop.time() + delay_s, data))
            if not data:
                return

    async def _write_down(
        self, connection: _Connection, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait_s = due - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            await self._unfrozen()
            if not data:
                connection.client.shutdown(socket.SHUT_WR)
                return
            setting = self._setting
            if setting is not connection.setting_seen:
                connection.setting_seen = setting
                connection.budget_base = connection.bytes_down
            limited = setting.mode in (Mode.RESET_AFTER, Mode.TRUNCATE_AFTER)
            if limited:
                room = setting.limit_bytes - (connection.bytes_down - connection.budget_base)
                data = data[: max(room, 0)]
            if data:
                await loop.sock_sendall(connection.client, data)
                with self._lock:
                    connection.bytes_down += len(data)
                    self._bytes_down += len(data)
            if limited and connection.bytes_down - connection.budget_base >= setting.limit_bytes:
                if setting.mode is Mode.RESET_AFTER:
                    await _drained(connection.client)
                    raise _Reset
                connection.client.shutdown(socket.SHUT_WR)
                raise _Finish
