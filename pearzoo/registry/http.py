"""A read-only registry served as static files over HTTP(S) (a web server, GitHub raw, an S3 website).

Reads use the standard library's urllib (no client dependency). What is read is verified by the shared
logic in `registry.base`, so a server can deliver files but cannot make pearzoo accept a modified one.
"""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from urllib.parse import urljoin

from pearzoo import __version__
from pearzoo.errors import NotFoundError, OfflineError, ResourceError
from pearzoo.registry.base import Registry

TIMEOUT_S = 30.0
# An index or a manifest is a few hundred kB at most; anything far larger is not a registry file.
MAX_BYTES = 64 * 1024 * 1024


class HttpRegistry(Registry):
    """A registry at an `http://` or `https://` base URL (the directory holding `index.json`)."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT_S) -> None:
        self.location = url
        self.base = url if url.endswith("/") else url + "/"
        self.timeout = timeout

    def describe(self, relpath: str) -> str:
        return urljoin(self.base, relpath)

    def read_bytes(self, relpath: str) -> bytes:
        url = self.describe(relpath)
        request = urllib.request.Request(url, headers={"User-Agent": f"pearzoo/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read(MAX_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                raise NotFoundError(f"{url}: not found (HTTP {exc.code})", path=url) from exc
            raise ResourceError(f"{url}: the registry answered HTTP {exc.code} {exc.reason}", path=url) from exc
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise OfflineError(f"registry {self.location} cannot be reached: {reason}", path=url) from exc
        except (socket.timeout, TimeoutError) as exc:
            raise OfflineError(f"registry {self.location} did not answer within {self.timeout:.0f} s", path=url) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise OfflineError(f"registry {self.location} cannot be read: {exc!r}", path=url) from exc
        if len(data) > MAX_BYTES:
            raise ResourceError(f"{url}: larger than {MAX_BYTES // 2**20} MiB; not a registry file", path=url)
        return data
