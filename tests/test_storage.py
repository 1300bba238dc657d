"""Storage: the local folder backend and its signed download route over HTTP, and Supabase Storage against a local
server that speaks its API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from api.main import install_error_handlers
from api.routes.files import router
from api.settings import Settings
from api.storage import LocalStorage, SupabaseStorage, build_storage
from tests.fake_supabase_storage import FakeSupabaseStorage

KEY = "signing-key-for-tests-0000000000000000"


class MovableClock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def storage(tmp_path: Path, clock: MovableClock) -> LocalStorage:
    return LocalStorage(tmp_path / "files", KEY, "http://files.test", clock=clock)


@pytest.fixture
async def http(storage: LocalStorage) -> httpx.AsyncClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router, prefix="/v1")
    app.state.studio = SimpleNamespace(storage=storage)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://files.test") as client:
        yield client


def _source(tmp_path: Path, data: bytes, name: str = "src.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_local_round_trip_overwrite_and_delete(storage: LocalStorage, tmp_path: Path) -> None:
    assert await storage.put_file("outputs", "u/j/a.wav", _source(tmp_path, b"first"), "audio/wav") == 5
    assert await storage.put_file("outputs", "u/j/a.wav", _source(tmp_path, b"second!"), "audio/wav") == 7
    got = await storage.get_file("outputs", "u/j/a.wav", tmp_path / "got.wav")
    assert got.read_bytes() == b"second!"
    # No temp files left beside the object after atomic writes.
    assert [p.name for p in (storage.root / "outputs" / "u" / "j").iterdir()] == ["a.wav"]
    await storage.delete("outputs", ["u/j/a.wav", "u/j/never-existed.wav"])
    with pytest.raises(FileNotFoundError):
        await storage.get_file("outputs", "u/j/a.wav", tmp_path / "again.wav")


@pytest.mark.parametrize(
    ("bucket", "key"),
    [
        ("outputs", "../escape"),
        ("outputs", "/etc/passwd"),
        ("outputs", "a//b"),
        ("outputs", "a/./b"),
        ("outputs", "a\\..\\b"),
        ("outputs", ""),
        ("..", "x"),
        ("Outputs/..", "x"),
        ("outputs", "a/b/.."),
    ],
)
async def test_local_refuses_keys_that_leave_the_bucket(
    storage: LocalStorage, tmp_path: Path, bucket: str, key: str
) -> None:
    with pytest.raises(ValueError):
        await storage.put_file(bucket, key, _source(tmp_path, b"x"), "text/plain")
    assert not (tmp_path / "escape").exists()


async def test_local_refuses_symlink_escape(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (storage.root / "outputs").mkdir(parents=True)
    (storage.root / "outputs" / "link").symlink_to(outside)
    with pytest.raises(ValueError):
        await storage.put_file("outputs", "link/file.txt", _source(tmp_path, b"x"), "text/plain")
    assert list(outside.iterdir()) == []


async def test_signed_url_serves_the_file_until_it_expires(
    storage: LocalStorage, http: httpx.AsyncClient, tmp_path: Path, clock: MovableClock
) -> None:
    await storage.put_file("outputs", "u/j/vocals.wav", _source(tmp_path, b"RIFF-data"), "audio/wav")
    url = await storage.signed_url("outputs", "u/j/vocals.wav", 60, filename="my vocals.wav")
    assert url.startswith("http://files.test/v1/files/outputs/u/j/vocals.wav?")

    response = await http.get(url)
    assert response.status_code == 200
    assert response.content == b"RIFF-data"
    assert response.headers["content-type"] == "audio/x-wav" or response.headers["content-type"] == "audio/wav"
    assert "attachment" in response.headers["content-disposition"]
    assert "my%20vocals.wav" in response.headers["content-disposition"]

    clock.now += timedelta(seconds=61)
    expired = await http.get(url)
    assert expired.status_code == 403
    assert expired.headers["content-type"] == "application/problem+json"
    assert expired.json()["code"] == "url_expired"


async def test_tampered_signed_urls_are_refused(storage: LocalStorage, http: httpx.AsyncClient, tmp_path: Path) -> None:
    await storage.put_file("outputs", "u/j/a.wav", _source(tmp_path, b"a"), "audio/wav")
    await storage.put_file("outputs", "u/j/b.wav", _source(tmp_path, b"b"), "audio/wav")
    url = await storage.signed_url("outputs", "u/j/a.wav", 60, filename="a.wav")
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def variant(path: str = parts.path, **changes: str) -> str:
        return f"{path}?{urlencode({**query, **changes})}"

    tampered = [
        variant(path=parts.path.replace("a.wav", "b.wav")),  # another object, same signature
        variant(expires=str(int(query["expires"]) + 3600)),  # a longer life
        variant(filename="evil.exe"),
        variant(sig="0" * 64),
        variant(sig="¹"),  # non-ASCII: once a 500 from compare_digest on str (found by schemathesis)
    ]
    for candidate in tampered:
        response = await http.get(candidate)
        assert response.status_code == 403, candidate
        assert response.json()["code"] == "bad_signature"
    assert (await http.get(variant())).status_code == 200


async def test_signed_url_of_a_deleted_file_is_404(
    storage: LocalStorage, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    await storage.put_file("outputs", "u/j/a.wav", _source(tmp_path, b"a"), "audio/wav")
    url = await storage.signed_url("outputs", "u/j/a.wav", 60)
    await storage.delete("outputs", ["u/j/a.wav"])
    response = await http.get(url)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_supabase_storage_speaks_the_storage_api(tmp_path: Path) -> None:
    with FakeSupabaseStorage() as fake:
        storage = SupabaseStorage(fake.url, "service-role-key")
        size = await storage.put_file("outputs", "u1/j1/vocals.wav", _source(tmp_path, b"RIFFwave"), "audio/wav")
        assert size == 8
        assert fake.objects[("outputs", "u1/j1/vocals.wav")].data == b"RIFFwave"
        assert fake.objects[("outputs", "u1/j1/vocals.wav")].content_type == "audio/wav"
        upload = fake.requests[-1]
        assert (upload.method, upload.path) == ("POST", "/storage/v1/object/outputs/u1/j1/vocals.wav")
        assert upload.headers["authorization"] == "Bearer service-role-key"
        assert upload.headers["apikey"] == "service-role-key"
        assert upload.headers["x-upsert"] == "true"

        # A retry overwrites its deterministic key rather than failing on "already exists".
        await storage.put_file("outputs", "u1/j1/vocals.wav", _source(tmp_path, b"RIFFwave2"), "audio/wav")
        assert fake.objects[("outputs", "u1/j1/vocals.wav")].data == b"RIFFwave2"

        dest = await storage.get_file("outputs", "u1/j1/vocals.wav", tmp_path / "down.wav")
        assert dest.read_bytes() == b"RIFFwave2"
        assert (fake.requests[-1].method, fake.requests[-1].path) == (
            "GET",
            "/storage/v1/object/outputs/u1/j1/vocals.wav",
        )

        url = await storage.signed_url("outputs", "u1/j1/vocals.wav", 600, filename="vocals.wav")
        sign = fake.requests[-1]
        assert (sign.method, sign.path) == ("POST", "/storage/v1/object/sign/outputs/u1/j1/vocals.wav")
        assert json.loads(sign.body) == {"expiresIn": "600", "download": "vocals.wav"}
        parsed = urlsplit(url)
        assert f"{parsed.scheme}://{parsed.netloc}" == fake.url
        assert parsed.path == "/storage/v1/object/sign/outputs/u1/j1/vocals.wav"
        assert parse_qs(parsed.query)["download"] == ["vocals.wav"]
        assert parse_qs(parsed.query)["token"]

        await storage.delete("outputs", ["u1/j1/vocals.wav", "u1/j1/missing.wav"])
        delete = fake.requests[-1]
        assert (delete.method, delete.path) == ("DELETE", "/storage/v1/object/outputs")
        assert json.loads(delete.body) == {"prefixes": ["u1/j1/vocals.wav", "u1/j1/missing.wav"]}
        assert fake.objects == {}

        with pytest.raises(FileNotFoundError):
            await storage.get_file("outputs", "u1/j1/vocals.wav", tmp_path / "gone.wav")
        with pytest.raises(ValueError):
            await storage.put_file("outputs", "../x", _source(tmp_path, b"x"), "text/plain")


def test_build_storage_picks_the_backend(tmp_path: Path) -> None:
    local = build_storage(Settings(state_dir=tmp_path, storage_backend="local"), KEY)
    assert isinstance(local, LocalStorage)
    assert local.root == (tmp_path / "files").resolve()
    remote = build_storage(
        Settings(
            state_dir=tmp_path,
            storage_backend="supabase",
            SUPABASE_URL="https://x.supabase.co",
            SUPABASE_SERVICE_ROLE_KEY="k",
        ),
        KEY,
    )
    assert isinstance(remote, SupabaseStorage)
    with pytest.raises(ValueError):
        build_storage(Settings(state_dir=tmp_path, storage_backend="supabase", SUPABASE_URL=None), KEY)
