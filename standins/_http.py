"""A small threaded HTTPS server that the Azure stand-ins share.

It gives each stand-in a call log, latency, and a queue of injected faults
(status codes with optional ``Retry-After``, delays and connection resets), so
tests can drive the real client libraries through the failures Azure produces.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Call:
    """One request the stand-in received, as a test sees it."""

    method: str
    path: str
    query: Mapping[str, str]
    status: int
    started: float
    finished: float
    auth_scheme: str  # "Basic", "Bearer" or "" -- never the credential itself
    body: Any = None


@dataclass
class Fault:
    """An injected failure for requests that match ``method`` and ``path`` (a regex)."""

    status: int = 503
    method: str | None = None
    path: str = ".*"
    times: int = 1
    skip: int = 0  # let this many matching requests through first
    retry_after: float | None = None
    delay: float = 0.0  # seconds before answering (or before the reset)
    reset: bool = False  # close the connection without an answer
    passthrough: bool = False  # only delay, then answer the request normally
    applied: bool = False  # carry the request out, then answer with the fault (or reset): a lost answer
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None


@dataclass
class Response:
    status: int
    body: Any = None  # dict/list -> JSON; str -> text; None -> empty
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"


class Request:
    """What a stand-in route sees of one request."""

    def __init__(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        parts = urlsplit(handler.path)
        self.method = handler.command
        self.path = parts.path
        self.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.headers = handler.headers
        self.raw_body = body

    def json(self) -> Any:
        return json.loads(self.raw_body.decode("utf-8")) if self.raw_body else None


class StandInServer:
    """Base class: subclasses implement :meth:`handle` and return a :class:`Response`."""

    name = "stand-in"

    def __init__(self, *, ssl_context: ssl.SSLContext | None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self.calls: list[Call] = []
        self.latency = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._active = 0
        self.max_concurrency = 0
        self._rate: float | None = None
        self._rate_retry_after = 1.0
        self._tokens = 0.0
        self._refilled = 0.0
        self.throttled = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> StandInServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; with Nagle on, the second waits ~40 ms for
            # the client's delayed ACK, which would add 40 ms to every call.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output clean; the call log is the record

            def _serve(self) -> None:
                outer._dispatch(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815 -- http.server's names

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

            def finish_request(self, request: Any, client_address: Any) -> None:
                # TLS handshake in the worker thread, so a slow client never blocks accept().
                if outer._ssl_context is not None:
                    try:
                        request = outer._ssl_context.wrap_socket(request, server_side=True)
                    except (ssl.SSLError, OSError):
                        request.close()
                        return
                try:
                    super().finish_request(request, client_address)
                finally:
                    request.close()

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # client went away (resets are part of the tests)

        self._server = Server((self._host, self._port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StandInServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "stand-in not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self.port}"

    # -- test controls ---------------------------------------------------------------
    def throttle(self, per_second: float | None, *, retry_after: float = 1.0) -> None:
        """Answer 429 (with Retry-After) beyond ``per_second`` requests, like a rate-limited service."""
        with self._lock:
            self._rate = per_second
            self._rate_retry_after = retry_after
            self._tokens = per_second or 0.0
            self._refilled = time.monotonic()
            self.throttled = 0

    def _over_rate(self) -> bool:
        with self._lock:
            if not self._rate:
                return False
            now = time.monotonic()
            self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
            self._refilled = now
            if self._tokens >= 1:
                self._tokens -= 1
                return False
            self.throttled += 1
            return True

    def inject(self, status: int = 503, **kwargs: Any) -> Fault:
        """Queue a fault; see :class:`Fault` for the options."""
        fault = Fault(status=status, **kwargs)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()
            self.max_concurrency = 0

    def count(self, method: str | None = None, path: str = ".*") -> int:
        with self._lock:
            return sum(
                1 for c in self.calls if (method is None or c.method == method) and re.search(path, c.path) is not None
            )

    # -- request handling ------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        raise NotImplementedError  # subclasses answer requests

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.matches(method, path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.times -= 1
                    return fault
        return None

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = Request(handler, body)
        auth = handler.headers.get("Authorization", "")
        with self._lock:
            self._active += 1
            self.max_concurrency = max(self.max_concurrency, self._active)
        try:
            fault = self._take_fault(request.method, request.path)
            if fault is None and self._over_rate():
                fault = Fault(status=429, retry_after=self._rate_retry_after)
            if fault is not None and fault.delay:
                time.sleep(fault.delay)
            if fault is not None and fault.applied:
                with contextlib.suppress(_Abort):
                    self.handle(request)  # its effects stay; its answer is lost
            if fault is not None and fault.reset:
                self._record(request, 0, started, auth)
                _reset(handler)
                return
            if fault is not None and not fault.passthrough:
                response = self._fault_response(fault)
            else:
                try:
                    response = self.handle(request)
                except _Abort as abort:
                    response = abort.response
            if self.latency:
                time.sleep(self.latency)
            self._record(request, response.status, started, auth)
            _write(handler, response)
        finally:
            with self._lock:
                self._active -= 1

    def _fault_response(self, fault: Fault) -> Response:
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = _format_seconds(fault.retry_after)
        body = fault.body if fault.body is not None else self.error_body(fault.status)
        return Response(fault.status, body, headers)

    def error_body(self, status: int) -> Any:
        return {"error": {"code": f"Injected{status}", "message": f"Injected fault {status}"}}

    def _record(self, request: Request, status: int, started: float, auth: str) -> None:
        try:
            body = request.json()
        except ValueError:
            body = None
        call = Call(
            request.method,
            request.path,
            request.query,
            status,
            started,
            time.monotonic(),
            auth.split(" ", 1)[0] if auth else "",
            body,
        )
        with self._lock:
            self.calls.append(call)


class _Abort(Exception):  # noqa: N818 -- control flow, not an error
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def abort(status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> _Abort:
    """Build an exception a route raises to answer with an error."""
    return _Abort(Response(status, body, headers or {}))


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _write(handler: BaseHTTPRequestHandler, response: Response) -> None:
    if response.body is None:
        payload = b""
    elif isinstance(response.body, bytes):
        payload = response.body
    elif isinstance(response.body, str):
        payload = response.body.encode("utf-8")
    else:
        payload = json.dumps(response.body).encode("utf-8")
    try:
        handler.send_response(response.status)
        if payload:
            handler.send_header("Content-Type", response.content_type)
        handler.send_header("Content-Length", str(len(payload)))
        for key, value in response.headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(payload)
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        handler.close_connection = True


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Drop the connection without a response, as a reset middlebox would."""
    handler.close_connection = True
    conn = handler.connection
    try:
        # SO_LINGER 0 turns close() into an RST instead of a polite FIN.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass
