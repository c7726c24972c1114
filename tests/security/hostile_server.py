"""A hostile HTTP server on loopback: each path answers with raw bytes of the test's choosing, as fast or as slowly
as it likes (for pearzoo/registry/http.py and the CLI over it). Not a test module: tests import `hostile`."""

from __future__ import annotations

import contextlib
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

Behaviour = Callable[[Any, threading.Event], None]


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(65537).decode("latin-1")
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass
        parts = line.split()
        path = parts[1] if len(parts) > 1 else "/"
        self.server.hits.append(path)  # type: ignore[attr-defined]
        behaviour = self.server.routes.get(path) or self.server.routes.get("*")  # type: ignore[attr-defined]
        try:
            if behaviour is None:
                self.wfile.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                behaviour(self.wfile, self.server.stop)  # type: ignore[attr-defined]
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: the point of most of these tests


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def hostile(routes: dict[str, Behaviour], *, tls: tuple[Any, Any] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Serve `routes` (path -> behaviour(wfile, stop_event); `*` for any path); yields (base URL, hit paths).

    `tls=(cert_file, key_file)` serves HTTPS instead."""
    server = _Server(("127.0.0.1", 0), _Handler)
    scheme = "http"
    if tls is not None:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    server.routes = routes  # type: ignore[attr-defined]
    server.hits = []  # type: ignore[attr-defined]
    server.stop = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/", server.hits  # type: ignore[attr-defined]
    finally:
        server.stop.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()
        thread.join()


def body(data: bytes, *, status: str = "200 OK", headers: str = "") -> Behaviour:
    def send(w: Any, stop: threading.Event) -> None:
        w.write(f"HTTP/1.0 {status}\r\nContent-Length: {len(data)}\r\n{headers}\r\n".encode("latin-1") + data)

    return send


def raw(data: bytes) -> Behaviour:
    def send(w: Any, stop: threading.Event) -> None:
        w.write(data)

    return send


def drip(prefix: bytes, *, every: float = 0.3, byte: bytes = b" ") -> Behaviour:
    """Send `prefix`, then one byte every `every` seconds until the client leaves or the server stops."""

    def send(w: Any, stop: threading.Event) -> None:
        w.write(prefix)
        w.flush()
        while not stop.wait(every):
            w.write(byte)
            w.flush()

    return send


def huge(size: int, *, chunk: int = 1 << 20) -> Behaviour:
    def send(w: Any, stop: threading.Event) -> None:
        w.write(f"HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"[" * chunk
        sent = 0
        while sent < size and not stop.is_set():
            w.write(block[: min(chunk, size - sent)])
            sent += chunk

    return send


def stall() -> Behaviour:
    """Accept, read the request, send nothing."""

    def send(w: Any, stop: threading.Event) -> None:
        stop.wait(30)

    return send


def self_signed_cert(directory: Any) -> tuple[Any, Any]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, made now; the client trusts it via SSL_CERT_FILE."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


def elapsed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start
