"""HTTP/1.1 clients for the load generator: a raw asyncio keep-alive client, and httpx.

On a 2-core machine the client shares the cores with the server it measures, so its own CPU
cost per request is part of every figure. The raw client does only what a benchmark needs
(pre-encoded POST bodies, Content-Length or chunked responses, keep-alive connections) in a
few dozen lines of asyncio streams; httpx is kept as a choice so that the two can be compared
(``--client httpx``), and every run reports the client's CPU time per request.

Both only ever talk to loopback addresses (``require_loopback``): this is a load generator.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Sequence
from typing import Literal, Protocol
from urllib.parse import urlsplit

# "wrk" runs the closed-loop levels from Debian's wrk (distilserve.bench.wrk); its other phases
# (warm-up, open loop, overload, chat turns) use the raw client.
ClientKind = Literal["wrk", "raw", "httpx"]


class NotLoopbackError(ValueError):
    """The target is not a loopback address; the load generator refuses it."""


def require_loopback(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://`` URL whose host resolves only to loopback addresses."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise NotLoopbackError(f"{url!r}: only plain http:// on a loopback address is supported")
    host = parts.hostname
    if not host:
        raise NotLoopbackError(f"{url!r} has no host")
    port = parts.port or 80
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as exc:
        raise NotLoopbackError(f"{url!r}: cannot resolve {host!r} ({exc})") from exc
    # Every address must be loopback: a name that also resolves elsewhere could send load out.
    outside = sorted(address for address in addresses if not ipaddress.ip_address(address).is_loopback)
    if outside or not addresses:
        raise NotLoopbackError(
            f"{url!r} resolves to {', '.join(outside) or 'nothing'}: the load generator only targets "
            "loopback addresses (127.0.0.0/8, ::1)"
        )
    return host, port


class HttpClient(Protocol):
    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST a JSON body; returns (status, response body). Raises OSError on connection failure."""

    async def aclose(self) -> None: ...


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


class ProtocolError(OSError):
    """The server's answer is not HTTP/1.1 as this client reads it."""


class StaleConnectionError(ConnectionResetError):
    """A reused keep-alive connection was closed by the server before it answered."""


class RawHttpClient:
    """Keep-alive HTTP/1.1 over asyncio streams, one request per connection at a time.

    Idle connections are reused last-in first-out; a request that finds none opens a new one,
    so the number of connections follows the number of requests in flight. Servers close idle
    keep-alive connections (uvicorn after 5 s), so a connection idle for longer than
    ``max_idle_s`` is not reused, and a request whose reused connection turns out closed
    before any answer is sent once more on a new one (as browsers and httpx do); a failure on
    a new connection is the server's and is reported.
    """

    def __init__(self, url: str, max_idle_s: float = 2.0) -> None:
        self.host, self.port = require_loopback(url)
        self.max_idle_s = max_idle_s
        self._idle: list[_Connection] = []
        self._prefix = f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n".encode()

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since <= self.max_idle_s and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    def _release(self, connection: _Connection, keep_alive: bool) -> None:
        if keep_alive:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Small requests and answers: Nagle's delay would add up to 40 ms to each.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    async def _exchange(self, connection: _Connection, request: bytes) -> tuple[int, bytes]:
        try:
            connection.writer.write(request)
            status, payload, keep_alive = await self._read_response(connection.reader)
        except BaseException:
            connection.close()
            raise
        self._release(connection, keep_alive)
        return status, payload

    async def request(self, request: bytes) -> tuple[int, bytes]:
        reused = self._take_idle()
        if reused is not None:
            try:
                return await self._exchange(reused, request)
            except StaleConnectionError:
                pass  # closed while idle: the server never saw the request; send it again
        return await self._exchange(await self._connect(), request)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return await self.request(
            b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path.encode(), self._prefix, len(body), body)
        )

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self.request(b"GET %s HTTP/1.1\r\n%s\r\n" % (path.encode(), self._prefix))

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise StaleConnectionError("server closed the connection before answering") from exc
            raise ConnectionResetError("server closed the connection mid-answer") from exc
        except ConnectionResetError as exc:
            raise StaleConnectionError(str(exc)) from exc
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0]!r}")
        status = int(status_line[1])
        length: int | None = None
        chunked = False
        keep_alive = status_line[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep_alive = b"close" not in value.lower()
        if chunked:
            parts: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # trailers are not used by these servers
                    break
                parts.append((await reader.readexactly(size + 2))[:-2])
            return status, b"".join(parts), keep_alive
        if length is None:
            # No length and not chunked: the body runs to the end of the connection.
            return status, await reader.read(), False
        return status, await reader.readexactly(length), keep_alive

    async def aclose(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class HttpxClient:
    """The same interface over ``httpx.AsyncClient`` (for comparing the clients' own cost)."""

    def __init__(self, url: str, max_connections: int = 1024) -> None:
        import httpx

        require_loopback(url)
        # httpx logs every request at INFO: that would be measured as the client's own cost.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._client = httpx.AsyncClient(
            base_url=url,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            timeout=httpx.Timeout(None),
            headers={"content-type": "application/json"},
        )

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        response = await self._client.post(path, content=body)
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(kind: ClientKind, url: str) -> HttpClient:
    return HttpxClient(url) if kind == "httpx" else RawHttpClient(url)


def loopback_urls(urls: Sequence[str]) -> None:
    """Check several URLs at once (settings validation)."""
    for url in urls:
        require_loopback(url)
