"""The HTTP server: uvicorn, with every phase of a connection bounded so that no client (idle, slow or huge) holds
the others up.

uvicorn bounds keep-alive and shutdown; ``GuardedHttpToolsProtocol`` adds what a server reachable by others needs
beyond that: a deadline for a request's head (request line and headers) and one for its body, a cap on the head's
size and on its number of header fields, and a cap on open connections that closes the longest-idle one to make room,
or, when every one is busy, answers the newcomer 503 with Retry-After once its request has arrived (never a reset).

It extends uvicorn's ``HttpToolsProtocol`` (its parser callbacks, ``connections``, ``cycle``, ``transport``), which is
not uvicorn's public API: pyproject.toml pins uvicorn to the versions tested with it.
"""
import asyncio
import http
import json
import logging
import time
from dataclasses import dataclass
from typing import Optional

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger('scalavit.serve')

FIRST_BYTE_GRACE_S = 1.0  # a new connection silent for longer is idle (and the first to close to make room)


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float = 10.0  # from a connection's opening (or a request's first byte) to its last header
    body_timeout_s: float = 30.0  # from the last header to the body's last byte
    keep_alive_timeout_s: float = 5.0  # an idle connection between requests
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_connections: int = 1024  # above the application's own limit of requests in progress, which answers 503
    drain_timeout_s: float = 10.0  # on SIGTERM: for the requests in flight, then for the queue

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"--{name.removesuffix('_s').replace('_', '-')} must be positive, got {value}")


class ServerConfig(uvicorn.Config):
    def __init__(self, app, limits: Limits, **options):
        super().__init__(app, http=GuardedHttpToolsProtocol, timeout_keep_alive=limits.keep_alive_timeout_s,
                         timeout_graceful_shutdown=limits.drain_timeout_s, **options)
        self.limits = limits


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and caps of ``Limits`` (``config.limits``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self.limits: Limits = self.config.limits
        self.in_head, self.head_bytes, self.refused, self.over_capacity = True, 0, False, False
        # idle, for making room, from a second after it opened: a client in a burst sends its request at once
        self.idle_since: Optional[float] = time.monotonic() + FIRST_BYTE_GRACE_S
        self.deadline: Optional[asyncio.TimerHandle] = None
        self._arm(self.limits.header_timeout_s, self._head_timed_out)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        super().data_received(data)
        if self.in_head and not self.refused and not self.transport.is_closing():
            # counted after parsing: the part of ``data`` past the head (a body) never counts
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"the request's head is over {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        if self.refused:
            return
        super().on_message_begin()
        self.in_head, self.head_bytes, self.idle_since = True, 0, None
        if self.deadline is None:  # a later request on a kept-alive connection: its head's deadline starts now
            self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        if self.refused:
            return
        self.in_head = False
        self._disarm()
        if len(self.headers) > self.limits.max_headers:
            self._refuse(431, f"the request has {len(self.headers)} header fields, over {self.limits.max_headers}")
            return
        if not self.over_capacity:  # else its body is read and dropped, and then it is answered 503
            super().on_headers_complete()
        self._arm(self.limits.body_timeout_s, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        if not (self.refused or self.over_capacity):
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.refused:
            return
        self._disarm()
        if self.over_capacity:  # answered once its body is in: closing on unread data would reset the connection
            self._refuse(503, f"overloaded: {len(self.connections)} connections open, over --max-connections "
                              f"{self.limits.max_connections}; try again shortly", retry_after_s=1)
            return
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.idle_since = time.monotonic()  # idle until the next request's first byte (uvicorn's keep-alive)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, 'the request is not valid HTTP/1.1')

    # Deadlines and caps

    def _arm(self, seconds: float, expired) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _head_timed_out(self) -> None:
        self.deadline = None
        if self.head_bytes or not self.in_head:  # a request had begun: say why it ends
            self._refuse(408, f"the request's head did not arrive within {self.limits.header_timeout_s:g} s")
        else:
            self.transport.close()

    def _body_timed_out(self) -> None:
        self.deadline = None
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(408, f"the request's body did not arrive within {self.limits.body_timeout_s:g} s")
        else:
            self.transport.close()

    def _make_room(self) -> None:
        """Over --max-connections: the connection idle the longest closes (a silent client's, or one kept alive
        between requests).
        If every one is busy with a request, this new one is answered 503 once its request has arrived (within the
        head's and the body's deadlines, the body dropped as it comes); past twice the cap it is closed at once, so
        that the connections stay bounded."""
        now = time.monotonic()
        idle = [c for c in self.connections
                if c is not self and getattr(c, 'idle_since', None) is not None and c.idle_since <= now]
        if idle:
            min(idle, key=lambda c: c.idle_since).transport.close()
        elif len(self.connections) <= 2 * self.limits.max_connections:
            self.over_capacity = True
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str, retry_after_s: Optional[int] = None) -> None:
        """Answers ``status`` with a JSON error, as the application's errors are, and closes the connection."""
        self.refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        body = json.dumps({'error': message}).encode()
        headers = ['content-type: application/json', f'content-length: {len(body)}', 'connection: close']
        if retry_after_s is not None:
            headers.append(f'retry-after: {retry_after_s}')
        head = '\r\n'.join([f'HTTP/1.1 {status} {http.HTTPStatus(status).phrase}', *headers, '', ''])
        self.transport.write(head.encode() + body)
        self.transport.close()
        log.debug("refused a request with %d: %s", status, message)


def serve(app, host: str, port: int, limits: Limits) -> None:
    """Runs ``app`` until SIGTERM or SIGINT, then drains within ``limits.drain_timeout_s``."""
    uvicorn.Server(ServerConfig(app, limits, host=host, port=port, log_level='warning', access_log=False)).run()
