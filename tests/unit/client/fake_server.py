"""A small real HTTP server that answers the client as a test tells it to, and the CLI run in
process: for the tests of the client and the postgraas CLI (test_client_*.py)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from click.testing import CliRunner

from postgraas_server.client import Instance, PostgraasClient
from postgraas_server.client.cli import main

TOKEN = "pgr_1_s3cr3t-token-value-abcdefghijkl"


def instance_json(**overrides: Any) -> dict[str, Any]:
    body = {
        "postgraas_instance_id": 7,
        "postgraas_instance_name": "my-db",
        "db_name": "my_db",
        "db_username": "my_db",
        "host": "127.0.0.1",
        "port": 20001,
        "container_id": "abc",
        "backend": "local",
        "status": "ready",
        "status_detail": None,
        "expires_at": "2030-01-01T02:00:00Z",
        "connection_uri": "postgresql://my_db@127.0.0.1:20001/my_db",
        "creation_timestamp": "2030-01-01T00:00:00Z",
        "id": 7,
        "username": "my_db",
        "hostname": "127.0.0.1",
        "password": "",
    }
    return {**body, **overrides}


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakeServer:
    """Answers each (method, path) with the replies queued for it; the last one repeats."""

    def __init__(self) -> None:
        self.replies: dict[tuple[str, str], list[Reply]] = {}
        self.seen: list[Seen] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                fake.seen.append(
                    Seen(
                        self.command,
                        parts.path,
                        parse_qs(parts.query),
                        dict(self.headers),
                        json.loads(data) if data else None,
                    )
                )
                queue = fake.replies.get((self.command, parts.path)) or [Reply(404, {"status": "failed", "msg": "?"})]
                reply = queue.pop(0) if len(queue) > 1 else queue[0]
                if reply.delay:
                    fake.release.wait(reply.delay)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                content_type = "text/html" if reply.raw is not None else "application/json"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left: nothing to report

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def on(self, method: str, path: str, *replies: Reply) -> None:
        self.replies[(method, path)] = list(replies)

    def client(self, **kwargs: Any) -> PostgraasClient:
        return PostgraasClient(self.url, **kwargs)


def run(args: list[str], **env: str | None) -> Any:
    base: dict[str, str | None] = {"POSTGRAAS_URL": None, "POSTGRAAS_TOKEN": None, "PGPASSWORD": None}
    return CliRunner().invoke(main, args, env={**base, **env})


def created(password: str = "Zq3-_generated_url_safe_password_", **overrides: Any) -> Instance:
    return Instance.from_json(instance_json(db_pwd=password, **overrides), password=password)
