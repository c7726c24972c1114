"""A read-only registry served as static files over HTTP(S) (a web server, GitHub raw, an S3 website).

Reads use the standard library's urllib (no client dependency). What is read is verified by the shared
logic in `registry.base`, so a server can deliver files but cannot make pearzoo accept a modified one.

A hostile or broken server is bounded three ways: every request has a whole-request deadline (a watchdog
shuts the socket down when it passes, so a server that drips one byte every few seconds cannot hold a
read open: a per-read timeout alone restarts with every byte), a body larger than `MAX_BYTES` is refused
after reading one byte past it, and redirects are not followed (a registry URL names the files' real
place; a redirect to another host would move trust there silently).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urljoin

from pearzoo import __version__
from pearzoo.document import one_line
from pearzoo.errors import NotFoundError, OfflineError, ResourceError
from pearzoo.registry.base import Registry

#: Whole-request deadline in seconds (connect, headers and body together), read at call time.
DEADLINE_S = 60.0
# An index or a manifest is a few hundred kB at most; anything far larger is not a registry file.
MAX_BYTES = 64 * 1024 * 1024


class _Deadline:
    """Shuts down every socket of one request when its time is up, wherever the request is blocked."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            if sock is not None:
                self._sockets.append(sock)
            fired = self.expired
        if fired and sock is not None:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _watched(base: type[http.client.HTTPConnection], deadline: _Deadline) -> Any:
    class Connection(base):  # type: ignore[misc,valid-type]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_watched(http.client.HTTPConnection, self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_watched(http.client.HTTPSConnection, self.deadline), req, context=self._context)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None  # urllib then raises the 3xx as an HTTPError, refused below


class HttpRegistry(Registry):
    """A registry at an `http://` or `https://` base URL (the directory holding `index.json`)."""

    def __init__(self, url: str, *, deadline: float | None = None) -> None:
        self.location = url
        self.base = url if url.endswith("/") else url + "/"
        self._deadline = deadline

    @property
    def deadline(self) -> float:
        return self._deadline if self._deadline is not None else DEADLINE_S

    def describe(self, relpath: str) -> str:
        return urljoin(self.base, relpath)

    def read_bytes(self, relpath: str) -> bytes:
        url = self.describe(relpath)
        request = urllib.request.Request(url, headers={"User-Agent": f"pearzoo/{__version__}"})
        limit = self.deadline
        started = time.monotonic()
        with _Deadline(limit) as deadline:
            opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline), _NoRedirect())
            try:
                # The socket timeout bounds connect; the watchdog bounds everything after it.
                with opener.open(request, timeout=limit) as response:
                    declared = response.headers.get("Content-Length", "")
                    data = response.read(MAX_BYTES + 1)
            except urllib.error.HTTPError as exc:
                if deadline.expired:
                    raise self._late(url, limit) from exc
                raise self._status_error(url, exc) from exc
            except urllib.error.URLError as exc:
                if deadline.expired or isinstance(exc.reason, (socket.timeout, TimeoutError)):
                    raise self._late(url, limit) from exc
                reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
                raise OfflineError(one_line(f"registry {self.location} cannot be reached: {reason}"), path=url) from exc
            except (socket.timeout, TimeoutError) as exc:
                raise self._late(url, limit) from exc
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # ValueError: http.client refuses a malformed status line or header in some versions.
                if deadline.expired:
                    raise self._late(url, limit) from exc
                raise OfflineError(one_line(f"registry {self.location} cannot be read: {type(exc).__name__}"), path=url) from exc
            if deadline.expired or time.monotonic() - started > limit:
                raise self._late(url, limit)  # the watchdog cut the body short: what was read is partial
        if len(data) > MAX_BYTES:
            raise ResourceError(f"{url}: larger than {MAX_BYTES // 2**20} MiB; not a registry file", path=url)
        if declared.isdigit() and len(data) < int(declared):
            # http.client returns a short body without complaint when the server closes early.
            raise OfflineError(
                f"registry {self.location} cannot be read: {url} ended after {len(data)} of {int(declared)} bytes", path=url
            )
        return data

    def _late(self, url: str, limit: float) -> OfflineError:
        return OfflineError(f"registry {self.location} did not deliver {url} within {limit:g} s", path=url)

    def _status_error(self, url: str, exc: urllib.error.HTTPError) -> Exception:
        if exc.code in (404, 410):
            return NotFoundError(f"{url}: not found (HTTP {exc.code})", path=url)
        if 300 <= exc.code < 400:
            target = exc.headers.get("Location", "?") if exc.headers else "?"
            return ResourceError(
                one_line(f"{url}: the registry redirects (HTTP {exc.code}) to {target[:200]}; pearzoo does not follow redirects"),
                hint="give the final URL as --registry",
                path=url,
            )
        return ResourceError(one_line(f"{url}: the registry answered HTTP {exc.code} {str(exc.reason)[:100]}"), path=url)
