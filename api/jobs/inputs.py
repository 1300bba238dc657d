"""Receiving a job's input: a streamed multipart upload or an https URL fetched behind an SSRF guard, then a probe.

Both paths write to a temp file while counting bytes and hashing, and stop at `max_upload_bytes` (413), so a
large or endless body never fills the disk or memory. Error choices (documented in the README's error table):

- a declared content type that is not audio (or a generic binary type), or a container outside
  wav/flac/mp3/ogg/m4a: 415 `unsupported_media_type`;
- bytes FFmpeg cannot decode: 422 `undecodable_audio` (the request is well formed, its content is not audio);
- a zero-byte file: 422 `empty_file`; a container with no samples: 422 `empty_audio`;
- longer than `max_duration_seconds`: 422 `audio_too_long` (413 is kept for byte size), measured on the packets the
  decoder would get, never a header's claim, and read no further than the limit;
- more than `max_audio_channels` channels: 422 `too_many_channels`; above `max_sample_rate`: 422
  `sample_rate_too_high`.

URL fetches: https only (http only when the policy allows it, for tests); the host is resolved once, every
address is checked (no private, loopback, link-local, multicast, reserved, unspecified or cloud-metadata
address; IPv4-mapped IPv6 is unwrapped) and the connection goes to the checked address with the original name
as Host and TLS SNI, so a DNS answer that changes between check and connect (rebinding) cannot redirect it.
Redirects are followed by hand, each target checked the same way.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import secrets
import tempfile
import unicodedata
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from api import outbound
from api.errors import Problem
from api.outbound import IPAddress, address_refusal
from inference.audio import MAX_CHANNELS, MAX_SAMPLE_RATE, AudioInfo, DecodeLimits, probe
from inference.base import EngineError

_CHUNK = 1 << 16
MAX_FORM_BYTES = 64 * 1024  # all text fields of a body together (`params` is small JSON); a JSON body too
MAX_PART_HEADER_BYTES = 8 * 1024  # the headers of one multipart part
MAX_LIST_ITEMS = 16  # values of one repeated `name[]` field (the OpenAI routes' timestamp_granularities[])
MAX_REDIRECTS = 3

# Declared types we accept: any audio/*, plus the generic binary types browsers and curl send for unknown files.
_GENERIC_TYPES = frozenset(
    {
        "",
        "application/octet-stream",
        "binary/octet-stream",
        "application/ogg",
        "video/ogg",
        "video/mp4",
        "application/mp4",
    }
)
# FFmpeg demuxer name -> the extension the input is stored under. Anything else is 415.
CONTAINER_EXTENSIONS = {
    "wav": ".wav",
    "flac": ".flac",
    "mp3": ".mp3",
    "ogg": ".ogg",
    "mov,mp4,m4a,3gp,3g2,mj2": ".m4a",
}
CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".m4a": "audio/mp4",
}
SUPPORTED_FORMATS = ("wav", "flac", "mp3", "ogg", "m4a")


@dataclass
class ReceivedInput:
    path: Path
    filename: str
    content_type: str
    bytes: int = 0
    sha256: str = ""


@dataclass
class MultipartBody:
    fields: dict[str, str] = field(default_factory=dict)
    # Fields named with the `name[]` array convention (OpenAI's `timestamp_granularities[]`) may repeat.
    lists: dict[str, list[str]] = field(default_factory=dict)
    file: ReceivedInput | None = None
    extra_files: dict[str, ReceivedInput] = field(default_factory=dict)  # second inputs (e.g. `reference`) by name


@dataclass(frozen=True)
class FetchPolicy:
    """Relaxations for local development and tests (settings.input_url_allow_insecure): production keeps both False."""

    allow_http: bool = False
    allow_private: bool = False


def too_large(max_bytes: int) -> Problem:
    return Problem(
        413,
        "payload_too_large",
        "The input is too large",
        f"Inputs are limited to {max_bytes} bytes.",
        max_bytes=max_bytes,
    )


def _unsupported_type(declared: str) -> Problem:
    return Problem(
        415,
        "unsupported_media_type",
        "Unsupported media type",
        f"{declared!r} is not an audio type; send one of {', '.join(SUPPORTED_FORMATS)}.",
        supported_formats=list(SUPPORTED_FORMATS),
    )


def check_declared_type(content_type: str | None) -> None:
    """415 unless the declared type could be audio. The probe decides what the bytes really are."""
    main = (content_type or "").split(";", 1)[0].strip().lower()
    if not (main.startswith("audio/") or main in _GENERIC_TYPES):
        raise _unsupported_type(main)


# Kept in a shown filename besides letters, marks, digits and spaces: punctuation with no meaning in HTML, URLs,
# shells or headers. Anything else (`<`, `>`, `=`, quotes, `&`, backticks, ...) becomes `_`, so a name is inert even
# where a client renders it as markup.
_FILENAME_PUNCTUATION = frozenset("._-()[]+,~@#%!")


def _filename_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if category[0] in "LMN" or ch in _FILENAME_PUNCTUATION:
        return ch
    return " " if category == "Zs" else "_"


def safe_filename(name: str | None, default: str = "input") -> str:
    """The last path segment without control or format characters, markup or quotes, at most 200 characters: shown
    back to the user only."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(_filename_char(ch) for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return cleaned[:200] or default


def lazy_workdir(prefix: str) -> Path:
    """A fresh temp folder's path, created by the first input written into it (`_Sink`): submits and quotes without
    a file never touch the disk. The caller removes it (`shutil.rmtree(..., ignore_errors=True)`)."""
    return Path(tempfile.gettempdir()) / f"{prefix}{secrets.token_hex(16)}"


class _Sink:
    """A temp file that counts and hashes what is written and refuses to grow past the cap."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hash = hashlib.sha256()
        self.size = 0
        directory.mkdir(mode=0o700, exist_ok=True)  # a lazy_workdir exists only once something is written
        handle, name = tempfile.mkstemp(dir=directory, prefix="input-")
        self.path = Path(name)
        self._file = open(handle, "wb")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        self.hash.update(data)
        # Small synchronous writes into the page cache: cheaper than a thread hop per chunk.
        self._file.write(data)

    def close(self) -> None:
        self._file.close()


class _MultipartReader:
    """Streams one multipart body: text fields into memory (small), each file part (`file`, or a second input named
    in `extra_file_names`) straight into its own capped temp file.

    Each part is judged as its headers arrive: a name outside `fields`, `file` and `extra_file_names`, or a name seen
    before, ends the read there, so a body has a bounded number of parts; part headers and all text fields together
    are capped.
    """

    def __init__(
        self, directory: Path, max_bytes: int, charset: str, fields: Collection[str], extra_file_names: frozenset[str]
    ) -> None:
        self.directory, self.max_bytes, self.charset, self.fields = directory, max_bytes, charset, fields
        self.extra_file_names = extra_file_names
        self.body = MultipartBody()
        self._form_bytes = 0
        self._header_bytes = 0
        self._sink: _Sink | None = None
        self._sinks: list[_Sink] = []
        self._received: ReceivedInput | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._data = bytearray()
        self._is_file = False

    def on_part_begin(self) -> None:
        self._headers, self._data, self._is_file, self._header_bytes = {}, bytearray(), False, 0

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise Problem(
                400,
                "bad_request",
                "Malformed multipart body",
                f"A part's headers are limited to {MAX_PART_HEADER_BYTES} bytes.",
            )

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise Problem(400, "bad_request", "Malformed multipart body", "Every part needs a name.")
        self._name = options[b"name"].decode(self.charset, "replace")
        is_main = self._name == "file"
        is_file_name = is_main or self._name in self.extra_file_names
        if not is_file_name and self._name not in self.fields:
            known = ["file", *sorted(self.extra_file_names), *sorted(self.fields)]
            raise Problem(
                422,
                "invalid_request",
                "Unknown form field",
                f"Unknown field `{self._name[:100]}`; fields: " + ", ".join(known) + ".",
            )
        if self._name in self.body.fields:
            raise Problem(422, "invalid_request", "Repeated form field", f"`{self._name}` appears more than once.")
        if b"filename" in options or is_file_name:
            if not is_file_name:
                raise Problem(
                    422,
                    "invalid_request",
                    "Unexpected file part",
                    f"Send the input as `file` (second inputs: {', '.join(sorted(self.extra_file_names)) or 'none'}).",
                )
            if (self.body.file if is_main else self.body.extra_files.get(self._name)) is not None:
                raise Problem(422, "invalid_request", "Repeated file part", f"`{self._name}` appears more than once.")
            check_declared_type(self._headers.get(b"content-type", b"").decode("latin-1"))
            self._is_file = True
            # Each file is capped on its own: a second input is limited exactly like the main one.
            self._sink = _Sink(self.directory, self.max_bytes)
            self._sinks.append(self._sink)
            filename = options.get(b"filename", b"").decode(self.charset, "replace")
            self._received = ReceivedInput(
                path=self._sink.path,
                filename=safe_filename(filename, default=self._name if not is_main else "input"),
                content_type=self._headers.get(b"content-type", b"application/octet-stream").decode("latin-1"),
            )
            if is_main:
                self.body.file = self._received
            else:
                self.body.extra_files[self._name] = self._received

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            assert self._sink is not None
            self._sink.write(data[start:end])
            return
        self._form_bytes += end - start
        if self._form_bytes > MAX_FORM_BYTES:
            raise Problem(
                413,
                "payload_too_large",
                "The form fields are too large",
                f"Text fields are limited to {MAX_FORM_BYTES} bytes together.",
                max_bytes=MAX_FORM_BYTES,
            )
        self._data += data[start:end]

    def on_part_end(self) -> None:
        if self._is_file:
            assert self._sink is not None and self._received is not None
            self._sink.close()
            self._received.bytes = self._sink.size
            self._received.sha256 = self._sink.hash.hexdigest()
            self._sink, self._received = None, None
        elif self._name.endswith("[]"):
            values = self.body.lists.setdefault(self._name, [])
            if len(values) >= MAX_LIST_ITEMS:
                raise Problem(
                    422, "invalid_request", "Too many values", f"`{self._name}` takes {MAX_LIST_ITEMS} at most."
                )
            values.append(self._data.decode(self.charset, "replace"))
        else:
            self.body.fields[self._name] = self._data.decode(self.charset, "replace")

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def check_content_length(header: str | None, max_bytes: int, slack: int = MAX_FORM_BYTES) -> None:
    """Refuse early when the client announces a body we would refuse anyway (`slack` covers the form fields)."""
    if header is None:
        return
    try:
        length = int(header)
    except ValueError:
        raise Problem(400, "bad_request", "Invalid Content-Length") from None
    if length > max_bytes + slack:
        raise too_large(max_bytes)


async def read_multipart(
    content_type: str,
    stream: AsyncIterator[bytes],
    directory: Path,
    max_bytes: int,
    fields: Collection[str],
    extra_file_names: frozenset[str] = frozenset(),
) -> MultipartBody:
    """Parse a multipart/form-data body with text `fields`, the `file` part and any second inputs named in
    `extra_file_names`, each file capped at `max_bytes`. The caller deletes `directory` (it owns the temp files)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise Problem(400, "bad_request", "Malformed multipart body", "The Content-Type has no boundary.")
    charset = options.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    reader = _MultipartReader(directory, max_bytes, charset, fields, extra_file_names)
    callbacks = {
        name: getattr(reader, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
        )
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise Problem(400, "bad_request", "Malformed multipart body", "The body is not valid multipart.") from exc
    finally:
        reader.close()
    if any(part.sha256 == "" for part in [reader.body.file, *reader.body.extra_files.values()] if part is not None):
        raise Problem(400, "bad_request", "Malformed multipart body", "A file part is truncated.")
    return reader.body


# ---- URL inputs ----


def _not_allowed(detail: str) -> Problem:
    return Problem(422, "input_url_not_allowed", "The input URL is not allowed", detail)


def check_address(address: IPAddress) -> None:
    """Refuse any address that is not plainly on the public internet."""
    refusal = address_refusal(address)
    if refusal is not None:
        raise _not_allowed(refusal)


async def resolve_checked(host: str, port: int, policy: FetchPolicy) -> str:
    """Resolve once and return one checked address to connect to (`api.outbound.resolve_checked`)."""
    try:
        return await outbound.resolve_checked(host, port, allow_private=policy.allow_private)
    except outbound.OutboundRefused as exc:
        raise _not_allowed(str(exc)) from exc
    except (OSError, UnicodeError) as exc:
        raise Problem(
            422, "input_fetch_failed", "The input URL could not be fetched", f"The host {host!r} does not resolve."
        ) from exc


def _checked_url(url: str, policy: FetchPolicy) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise _not_allowed("The input URL is not a valid URL.") from exc
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if parsed.scheme not in allowed:
        raise _not_allowed("The input URL must use https.")
    if not parsed.host:
        raise _not_allowed("The input URL has no host.")
    if parsed.userinfo:
        raise _not_allowed("Credentials in the input URL are not allowed.")
    return parsed


def _filename_from_url(url: httpx.URL) -> str:
    return safe_filename(urlsplit(str(url)).path, default="input")


async def fetch_url(
    url: str, directory: Path, *, max_bytes: int, timeout: float, policy: FetchPolicy = FetchPolicy()
) -> ReceivedInput:
    """Download `url` into `directory` behind the SSRF guard, with a byte cap and an overall timeout."""
    target = _checked_url(url, policy)
    try:
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as client:
                for _ in range(MAX_REDIRECTS + 1):
                    port = target.port or (443 if target.scheme == "https" else 80)
                    address = await resolve_checked(outbound.host_name(target), port, policy)
                    request = outbound.pinned_request(
                        client, "GET", target, address, headers={"Accept": "audio/*, */*;q=0.5"}
                    )
                    response = await client.send(request, stream=True)
                    try:
                        if response.is_redirect and "location" in response.headers:
                            target = _checked_url(str(target.join(response.headers["location"])), policy)
                            continue
                        return await _save_response(response, target, directory, max_bytes)
                    finally:
                        await response.aclose()
                raise Problem(422, "input_fetch_failed", "The input URL could not be fetched", "Too many redirects.")
    except TimeoutError as exc:
        raise Problem(
            422,
            "input_fetch_failed",
            "The input URL could not be fetched",
            f"The download did not finish within {timeout:g} s.",
        ) from exc
    except httpx.HTTPError as exc:
        raise Problem(
            422, "input_fetch_failed", "The input URL could not be fetched", "The server could not be reached."
        ) from exc


async def _save_response(response: httpx.Response, url: httpx.URL, directory: Path, max_bytes: int) -> ReceivedInput:
    if response.status_code != 200:
        raise Problem(
            422,
            "input_fetch_failed",
            "The input URL could not be fetched",
            f"The server answered HTTP {response.status_code}.",
        )
    check_content_length(response.headers.get("content-length"), max_bytes, slack=0)
    declared = response.headers.get("content-type", "application/octet-stream")
    check_declared_type(declared)
    sink = _Sink(directory, max_bytes)
    try:
        async for chunk in response.aiter_raw(_CHUNK):
            sink.write(chunk)
    finally:
        sink.close()
    return ReceivedInput(
        path=sink.path,
        filename=_filename_from_url(url),
        content_type=declared,
        bytes=sink.size,
        sha256=sink.hash.hexdigest(),
    )


# ---- probing ----


@dataclass(frozen=True)
class ProbedInput:
    info: AudioInfo
    extension: str  # what the input is stored under, from the detected container (not the client's name)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.extension]


async def probe_input(
    path: Path, max_duration_s: float, *, max_channels: int = MAX_CHANNELS, max_sample_rate: int = MAX_SAMPLE_RATE
) -> ProbedInput:
    """Probe in a thread within the limits (it stops reading once past the duration); map failures to the 4xx above."""
    limits = DecodeLimits(max_seconds=max_duration_s, max_channels=max_channels, max_sample_rate=max_sample_rate)
    try:
        info = await asyncio.to_thread(probe, path, limits)
    except EngineError as exc:
        raise _probe_problem(exc, limits) from exc
    extension = CONTAINER_EXTENSIONS.get(info.container)
    if extension is None:
        raise Problem(
            415,
            "unsupported_media_type",
            "Unsupported audio format",
            f"{info.container} audio is not supported; send one of {', '.join(SUPPORTED_FORMATS)}.",
            supported_formats=list(SUPPORTED_FORMATS),
        )
    return ProbedInput(info=info, extension=extension)


def _probe_problem(exc: EngineError, limits: DecodeLimits) -> Problem:
    detail = str(exc)[:1].upper() + str(exc)[1:] + "."
    if exc.code == "audio_too_long":
        return Problem(422, exc.code, "The audio is too long", detail, max_duration_s=limits.max_seconds)
    if exc.code == "too_many_channels":
        return Problem(422, exc.code, "Too many channels", detail, max_channels=limits.max_channels)
    if exc.code == "sample_rate_too_high":
        return Problem(422, exc.code, "The sample rate is too high", detail, max_sample_rate=limits.max_sample_rate)
    return Problem(422, exc.code, "The input is not usable audio", str(exc))
