"""A loopback HTTP (or HTTPS) server that answers what a test tells it to: adapter sources fetched from "remote"
hosts, redirects, slow, dripping, chunked and compressed answers."""

from __future__ import annotations

import contextlib
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    """What one path answers.

    Attributes:
        delay: seconds before the answer.
        chunked: send the body in 4 KiB chunks with no Content-Length.
        drip: seconds between 10-byte pieces of the body (its full Content-Length declared first).
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    chunked: bool = False
    drip: float = 0.0


class Remote:
    """An HTTP server on a loopback address: ``answers`` by path (the query ignored), 404 otherwise.

    Attributes:
        requests: (path with query, headers) of every request it received.
        url: ``scheme://host:port``; ``name`` stands for the host in it (the name a TLS certificate holds).
    """

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, name: str | None = None) -> None:
        self.answers: dict[str, Answer] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        remote = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                remote.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                answer = remote.answers.get(self.path.split("?")[0], Answer(404))
                if answer.delay:
                    threading.Event().wait(answer.delay)
                with contextlib.suppress(OSError):  # the fetch gave up, as it should
                    self._send(answer)

            do_HEAD = do_GET  # the hub asks for a file's size first

            def _send(self, answer: Answer) -> None:
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                body = answer.body if self.command == "GET" else b""
                if answer.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 4096):
                        part = body[i : i + 4096]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                step = 10 if answer.drip else len(body) or 1
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    if answer.drip:
                        self.wfile.flush()
                        threading.Event().wait(answer.drip)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        port = self.server.server_address[1]
        shown = name or (f"[{host}]" if ":" in host else host)
        self.url = f"{self.scheme}://{shown}:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, path: str, body: bytes, **headers: str) -> str:
        self.answers[path] = Answer(200, headers, body)
        return self.url + path

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.answers[path] = Answer(status, {"Location": location})
        return self.url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
