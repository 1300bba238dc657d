"""A local HTTP server speaking Supabase Storage's object API (the routes and JSON shapes of supabase/storage's
`/object` endpoints), recording every request so tests can check what the client really sent."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

PREFIX = "/storage/v1/object/"


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Stored:
    data: bytes
    content_type: str


class FakeSupabaseStorage:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Stored] = {}
        self.requests: list[Received] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeSupabaseStorage:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _receive(self) -> Received:
                length = int(self.headers.get("content-length") or 0)
                parts = urlsplit(self.path)
                received = Received(
                    self.command,
                    unquote(parts.path),
                    parts.query,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                fake.requests.append(received)
                return received

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, payload: Any) -> None:
                self._send(status, json.dumps(payload).encode())

            def _error(self, status: int, code: str, message: str) -> None:
                # Storage's error body: statusCode is a string.
                self._json(status, {"statusCode": str(status), "error": code, "message": message})

            def _authorized(self, received: Received) -> bool:
                if (
                    not received.headers.get("authorization", "").startswith("Bearer ")
                    or "apikey" not in received.headers
                ):
                    self._error(400, "Unauthorized", "headers must have required property 'authorization'")
                    return False
                return True

            def do_POST(self) -> None:
                received = self._receive()
                if not self._authorized(received):
                    return
                rest = received.path.removeprefix(PREFIX)
                if rest.startswith("sign/"):
                    bucket, _, key = rest.removeprefix("sign/").partition("/")
                    if (bucket, key) not in fake.objects:
                        return self._error(404, "not_found", "Object not found")
                    token = uuid.uuid4().hex
                    return self._json(200, {"signedURL": f"/object/sign/{bucket}/{key}?token={token}"})
                bucket, _, key = rest.partition("/")
                if (bucket, key) in fake.objects and received.headers.get("x-upsert") != "true":
                    return self._error(409, "Duplicate", "The resource already exists")
                envelope = b"Content-Type: " + received.headers["content-type"].encode() + b"\r\n\r\n" + received.body
                message = BytesParser(policy=HTTP).parsebytes(envelope)
                for part in message.iter_parts():
                    if part.get_param("name", header="content-disposition") == "file":
                        data = part.get_payload(decode=True)
                        fake.objects[(bucket, key)] = Stored(data, part.get_content_type())
                        return self._json(200, {"Id": str(uuid.uuid4()), "Key": f"{bucket}/{key}"})
                self._error(400, "InvalidRequest", "no file part")

            def do_GET(self) -> None:
                received = self._receive()
                if not self._authorized(received):
                    return
                bucket, _, key = received.path.removeprefix(PREFIX).partition("/")
                stored = fake.objects.get((bucket, key))
                if stored is None:
                    return self._error(404, "not_found", "Object not found")
                self._send(200, stored.data, stored.content_type)

            def do_DELETE(self) -> None:
                received = self._receive()
                if not self._authorized(received):
                    return
                bucket = received.path.removeprefix(PREFIX)
                removed = []
                for key in json.loads(received.body)["prefixes"]:
                    if fake.objects.pop((bucket, key), None) is not None:
                        removed.append({"name": key, "bucket_id": bucket, "id": str(uuid.uuid4())})
                self._json(200, removed)

        return Handler
