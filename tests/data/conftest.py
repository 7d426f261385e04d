"""A real HTTP server on 127.0.0.1 (port 0, in a thread) serving in-memory files, with Range support.

A route is a path, or a path with its exact query string. Routes can ignore ``Range`` (to test
the restart), drop the connection after N bytes (a network cut), answer HTML or set headers; for the
fault tests they can also trickle (one byte every ``trickle`` s), go silent after N bytes or before the
headers, announce a wrong ``Content-Length``, answer Range requests with an error or from the wrong
byte, or fail the next N requests. Every request's path and headers are recorded in ``server.requests``.
A handler that waits (silent, trickling) ends when the test does.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest


@dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    ranges: bool = True  # honour Range requests with 206
    drop_after: int | None = None  # send a full Content-Length but close after this many bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float | None = None  # send the body one byte at a time, this many seconds apart
    stall_after: int | None = None  # send this many bytes, then nothing (the connection stays open)
    delay: float = 0.0  # seconds before the response headers (a server that accepts but does not answer)
    length: int | None = None  # the Content-Length to announce instead of the body's
    range_status: int | None = None  # answer Range requests with this status (e.g. 500), no body
    range_shift: int = 0  # answer a Range request for byte N with the bytes from N + range_shift
    fail: int = 0  # answer the next `fail` requests with `fail_status`
    fail_status: int = 500


@dataclass
class Server:
    port: int = 0
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)  # set when the test ends

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, **kw) -> str:
        self.routes[path] = Route(body, **kw)
        return self.url(path)

    def ranges_seen(self, path: str) -> list[str]:
        return [h["Range"] for p, h in self.requests if urlsplit(p).path == path and "Range" in h]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a stall test): nothing to answer

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {**(headers or {}), "Content-Length": "0"}.items():
            self.send_header(k, v)
        self.end_headers()

    def _get(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.path, dict(self.headers)))
        route = state.routes.get(self.path) or state.routes.get(urlsplit(self.path).path)
        if route is None:
            self.send_error(404)
            return
        if route.delay and state.stop.wait(route.delay):
            return
        if route.fail > 0:
            route.fail -= 1
            self._empty(route.fail_status)
            return
        body, status, extra = route.body, route.status, {}
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if m and route.ranges:
            if route.range_status is not None:
                self._empty(route.range_status)
                return
            start = max(0, int(m.group(1)) + route.range_shift)
            if start >= len(body):
                self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            status, extra = 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
            body = body[start:]
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", str(len(body) if route.length is None else route.length))
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        for k, v in {**route.headers, **extra}.items():
            self.send_header(k, v)
        self.end_headers()
        sent = body if route.drop_after is None else body[: route.drop_after]
        if route.stall_after is not None:
            sent = sent[: route.stall_after]
        if route.trickle is None:
            self.wfile.write(sent)
            self.wfile.flush()
        else:
            for i in range(len(sent)):
                self.wfile.write(sent[i : i + 1])
                self.wfile.flush()
                if state.stop.wait(route.trickle):
                    return
        if route.stall_after is not None:
            state.stop.wait(30)
        if route.drop_after is not None:
            self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = Server(port=httpd.server_address[1])  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.state.stop.set()  # type: ignore[attr-defined]
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Keep every request on 127.0.0.1 even where a proxy is configured."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def pascal_archive(tmp_path_factory) -> bytes:
    """``PASCALContext.tar.gz`` of the tiny fixture, as bytes."""
    from fixtures import build_pascal, make_tar

    tmp = tmp_path_factory.mktemp("pascal_src")
    return make_tar(build_pascal(tmp), tmp / "PASCALContext.tar.gz").read_bytes()


@pytest.fixture(scope="session")
def nyud_archive(tmp_path_factory) -> bytes:
    """``NYUDv2.tar.gz`` (ATRC layout) of the tiny fixture, as bytes."""
    from fixtures import build_nyud, make_tar

    tmp = tmp_path_factory.mktemp("nyud_src")
    return make_tar(build_nyud(tmp), tmp / "NYUDv2.tar.gz").read_bytes()
