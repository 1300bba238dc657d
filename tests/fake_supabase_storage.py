"""A local HTTP server speaking Supabase Storage's object API (the routes and JSON shapes of supabase/storage's
`/object` endpoints) and its signed tus endpoint (`/upload/resumable/sign`, authorized by an `x-signature` token from
`/object/upload/sign/...`: supabase/storage src/http/routes/tus/lifecycle.ts `onIncomingRequest`), recording every
request so tests can check what the client really sent."""

from __future__ import annotations

import base64
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
UPLOAD_SIGN = PREFIX + "upload/sign/"
TUS_SIGNED = "/storage/v1/upload/resumable/sign"


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


@dataclass
class TusUpload:
    bucket: str
    key: str
    length: int
    content_type: str
    data: bytearray


class FakeSupabaseStorage:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Stored] = {}
        self.upload_tokens: dict[str, tuple[str, str]] = {}  # x-signature token -> the one (bucket, key) it allows
        self.tus_uploads: dict[str, TusUpload] = {}
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

            def _signed(self, received: Received, bucket: str, key: str) -> bool:
                if fake.upload_tokens.get(received.headers.get("x-signature", "")) != (bucket, key):
                    self._error(400, "InvalidSignature", "Missing or invalid x-signature header")
                    return False
                return True

            def _tus_upload(self, received: Received) -> TusUpload | None:
                upload = fake.tus_uploads.get(received.path.removeprefix(TUS_SIGNED + "/"))
                if upload is None:
                    self._send(404, b"Not Found", "text/plain")
                elif self._signed(received, upload.bucket, upload.key):
                    return upload
                return None

            def _tus_create(self, received: Received) -> None:
                metadata = {}
                for item in received.headers.get("upload-metadata", "").split(","):
                    name, _, value = item.strip().partition(" ")
                    metadata[name] = base64.b64decode(value).decode()
                if not self._signed(received, metadata.get("bucketName", ""), metadata.get("objectName", "")):
                    return
                upload_id = uuid.uuid4().hex
                fake.tus_uploads[upload_id] = TusUpload(
                    metadata["bucketName"],
                    metadata["objectName"],
                    int(received.headers["upload-length"]),
                    metadata.get("contentType", "application/octet-stream"),
                    bytearray(),
                )
                self.send_response(201)
                self.send_header("location", f"{fake.url}{TUS_SIGNED}/{upload_id}")
                self.send_header("tus-resumable", "1.0.0")
                self.send_header("content-length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                received = self._receive()
                upload = self._tus_upload(received)
                if upload is None:
                    return
                self.send_response(200)
                self.send_header("upload-offset", str(len(upload.data)))
                self.send_header("upload-length", str(upload.length))
                self.send_header("tus-resumable", "1.0.0")
                self.end_headers()

            def do_PATCH(self) -> None:
                received = self._receive()
                upload = self._tus_upload(received)
                if upload is None:
                    return
                if int(received.headers["upload-offset"]) != len(upload.data):
                    return self._send(409, b"Upload-Offset conflict", "text/plain")
                upload.data += received.body
                if len(upload.data) == upload.length:
                    fake.objects[(upload.bucket, upload.key)] = Stored(bytes(upload.data), upload.content_type)
                self.send_response(204)
                self.send_header("upload-offset", str(len(upload.data)))
                self.send_header("tus-resumable", "1.0.0")
                self.end_headers()

            def do_POST(self) -> None:
                received = self._receive()
                if received.path == TUS_SIGNED:
                    return self._tus_create(received)  # authorized by x-signature, no bearer
                if not self._authorized(received):
                    return
                if received.path.startswith(UPLOAD_SIGN):
                    bucket, _, key = received.path.removeprefix(UPLOAD_SIGN).partition("/")
                    token = uuid.uuid4().hex
                    fake.upload_tokens[token] = (bucket, key)
                    return self._json(200, {"url": f"/object/upload/sign/{bucket}/{key}?token={token}"})
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
