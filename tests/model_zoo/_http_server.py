"""A real HTTP server on 127.0.0.1 that serves files from memory for download tests.

It honours ``Range: bytes=N-`` requests with 206 answers, and can misbehave on
purpose: drop the connection after a given number of bytes, or ignore Range and
answer 200 with the whole file.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


class PackageServer:
    """Serve ``files`` (URL path to bytes) on a free loopback port.

    Attributes
    ----------
    files : dict of str to bytes
        What to serve, by URL path such as ``/collection.json``.
    drops : dict of str to list of int
        For a path, the number of body bytes each coming request gets before the
        connection is closed; one entry is used up per request.
    ignore_range : bool
        Answer Range requests with 200 and the whole file.
    requests : list of tuple
        ``(path, headers)`` of every request received, in order.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, list[int]] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add_file(self, path: str, file: Path) -> bytes:
        data = file.read_bytes()
        self.files[path] = data
        return data

    def requests_for(self, path: str) -> list[dict[str, str]]:
        """Return the headers of each request for ``path``."""
        with self.lock:
            return [headers for p, headers in self.requests if p == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PackageServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        owner: PackageServer = self.server.owner  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        with owner.lock:
            owner.requests.append((path, dict(self.headers.items())))
            data = owner.files.get(path)
            drops = owner.drops.get(path)
            drop_after = drops.pop(0) if drops else None

        if data is None:
            self.send_error(404)
            return
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if requested and not owner.ignore_range:
            start = int(requested.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header(
                "Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"
            )
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop_after is not None:
            self.wfile.write(body[:drop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""
