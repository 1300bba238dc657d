"""Bearer-token authentication: local tokens, Supabase-style JWKS keys (ES256/RS256) with rotation and caching,
and every way a token can be wrong, over real HTTP against a real database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.deps import token_verifier
from api.errors import Problem
from api.security import JwksCache, TokenVerifier, mint_local_token
from tests.auth_support import (
    FakeMonotonic,
    JwksServer,
    assert_problem,
    claims_for,
    headers,
    http_client,
    insert_auth_user,
    local_user,
    open_state,
    serve_keys,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def handmade_token(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT built by hand, for tokens PyJWT refuses to make (alg none, HMAC keyed with a public key)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec2": ec.generate_private_key(ec.SECP256R1()),
    }


async def test_local_token_authenticates_and_gives_the_welcome_grant(app_state, client):
    user = await local_user(app_state, "Alice@Example.com")
    response = await client.get("/v1/credits", headers=user["headers"])
    assert response.status_code == 200, response.text
    assert response.json() == {"available": 100, "held": 0}
    claims = await token_verifier(app_state).verify(user["token"])
    assert claims["sub"] == str(user["id"]) and claims["email"] == "Alice@Example.com"
    assert claims["aud"] == "authenticated" and claims["role"] == "authenticated"
    assert claims["iss"] == "http://testserver/auth/v1"


async def test_ensure_user_is_idempotent_and_case_insensitive(app_state):
    from api.security import ensure_user

    first = await ensure_user(app_state.pool, app_state.settings, "carol@example.com")
    assert await ensure_user(app_state.pool, app_state.settings, "  CAROL@example.com ") == first
    async with app_state.pool.connection() as conn:
        grants = await (
            await conn.execute("SELECT count(*) FROM ledger_entries WHERE user_id = %s", (first,))
        ).fetchone()
    assert grants == (1,)
    with pytest.raises(ValueError):
        await ensure_user(app_state.pool, app_state.settings, "not an email")


def bad_tokens(settings: Any, signing_key: str, user_id: uuid.UUID) -> dict[str, str]:
    def sign(claims: dict[str, Any], key: str = signing_key) -> str:
        return jwt.encode(claims, key, algorithm="HS256")

    return {
        "expired": mint_local_token(settings, signing_key, user_id, "a@example.com", ttl_seconds=-3600),
        "wrongly_signed": sign(claims_for(settings, user_id), "another-secret-another-secret-another-secret-0"),
        "wrong_audience": sign(claims_for(settings, user_id, aud="anon")),
        "wrong_issuer": sign(claims_for(settings, user_id, iss="https://evil.example/auth/v1")),
        "no_expiry": sign(claims_for(settings, user_id, exp=None)),
        "anon_role": sign(claims_for(settings, user_id, role="anon")),
        "subject_not_uuid": sign(claims_for(settings, user_id, sub="alice")),
        "unknown_user": sign(claims_for(settings, uuid.uuid4())),
        "alg_none": handmade_token({"alg": "none", "typ": "JWT"}, claims_for(settings, user_id), None),
        "alg_HS512": jwt.encode(claims_for(settings, user_id), signing_key, algorithm="HS512"),
        "truncated": sign(claims_for(settings, user_id)).rsplit(".", 1)[0],
        "garbage": "not-a-jwt",
    }


@pytest.mark.parametrize(
    "case",
    ["expired", "wrongly_signed", "wrong_audience", "wrong_issuer", "no_expiry", "anon_role", "subject_not_uuid",
     "unknown_user", "alg_none", "alg_HS512", "truncated", "garbage"],
)  # fmt: skip
async def test_bad_tokens_get_401_problem(app_state, client, case):
    user = await local_user(app_state, "alice@example.com")
    token = bad_tokens(app_state.settings, app_state.signing_key, user["id"])[case]
    response = await client.get("/v1/credits", headers=headers(token))
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "bearer"])
async def test_missing_or_garbled_header_gets_401(client, header):
    response = await client.get("/v1/credits", headers={} if header is None else {"Authorization": header})
    body = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization" in body["detail"]


async def test_anonymous_supabase_session_is_refused(app_state, client):
    user = await local_user(app_state, "anon@example.com")
    token = jwt.encode(
        claims_for(app_state.settings, user["id"], is_anonymous=True), app_state.signing_key, algorithm="HS256"
    )
    assert_problem(await client.get("/v1/credits", headers=headers(token)), 403, "anonymous_not_allowed")


async def test_openapi_documents_bearer_auth(client):
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "401" in schema["paths"]["/v1/credits"]["get"]["responses"]
    assert {"/v1/health", "/v1/api-keys", "/v1/api-keys/{key_id}", "/v1/credits/ledger"} <= set(schema["paths"])


# ---- Supabase mode: keys from a JWKS served on 127.0.0.1 ----


def supabase_settings(settings: Any, url: str, **extra: Any) -> Any:
    return settings.model_copy(update={"supabase_url": url, "jwks_cache_seconds": 600, **extra})


def signed(settings: Any, user_id: uuid.UUID, key: Any, kid: str, alg: str, **claims: Any) -> str:
    return jwt.encode(claims_for(settings, user_id, **claims), key, algorithm=alg, headers={"kid": kid})


async def test_jwks_es256_and_rs256_tokens_are_accepted_over_http(settings, database_url, keys):
    with JwksServer() as server:
        serve_keys(server, [(keys["ec"], "ec-1", "ES256"), (keys["rsa"], "rsa-1", "RS256")])
        supa = supabase_settings(settings, server.url)
        supa_state = await open_state(supa, database_url)
        try:
            user_id = await insert_auth_user(supa_state)  # Supabase Auth created the user; we create the account
            async with http_client(supa_state) as client:
                for key, kid, alg in [(keys["ec"], "ec-1", "ES256"), (keys["rsa"], "rsa-1", "RS256")]:
                    response = await client.get("/v1/credits", headers=headers(signed(supa, user_id, key, kid, alg)))
                    assert response.status_code == 200, response.text
                    assert response.json() == {"available": 100, "held": 0}
                # a local-style token is not accepted once Supabase is configured (no HS secret set)
                local = jwt.encode(claims_for(supa, user_id), supa_state.signing_key, algorithm="HS256")
                assert_problem(await client.get("/v1/credits", headers=headers(local)), 401, "unauthorized")
            assert server.requests == 1  # one fetch served both keys and all three requests
        finally:
            await supa_state.pool.close()


async def test_jwks_cache_is_honoured_and_expires(settings, keys):
    clock = FakeMonotonic()
    with JwksServer() as server:
        serve_keys(server, [(keys["ec"], "ec-1", "ES256")])
        supa = supabase_settings(settings, server.url, jwks_cache_seconds=600)
        verifier = TokenVerifier.from_settings(supa, "unused", clock=clock)
        token = signed(supa, uuid.uuid4(), keys["ec"], "ec-1", "ES256")
        for _ in range(5):
            assert (await verifier.verify(token))["role"] == "authenticated"
        assert server.requests == 1
        clock.now += 599
        await verifier.verify(token)
        assert server.requests == 1
        clock.now += 2  # past max age: refetched before use
        await verifier.verify(token)
        assert server.requests == 2


async def test_jwks_rotation_new_kid_is_fetched_once_and_old_kid_stops_working(settings, keys):
    clock = FakeMonotonic()
    with JwksServer() as server:
        serve_keys(server, [(keys["ec"], "ec-1", "ES256")])
        supa = supabase_settings(settings, server.url)
        verifier = TokenVerifier.from_settings(supa, "unused", clock=clock)
        user_id = uuid.uuid4()
        old = signed(supa, user_id, keys["ec"], "ec-1", "ES256")
        await verifier.verify(old)
        serve_keys(server, [(keys["ec2"], "ec-2", "ES256")])  # rotation: the old key is revoked
        clock.now += 60  # later, but well within the cache's max age
        new = signed(supa, user_id, keys["ec2"], "ec-2", "ES256")
        assert (await verifier.verify(new))["sub"] == str(user_id)
        assert server.requests == 2  # the unknown kid triggered exactly one refetch
        with pytest.raises(Problem) as excinfo:
            await verifier.verify(old)
        assert excinfo.value.status == 401
        # forged kids within the cooldown do not refetch
        for n in range(3):
            with pytest.raises(Problem):
                await verifier.verify(signed(supa, user_id, keys["ec"], f"forged-{n}", "ES256"))
        assert server.requests == 2
        clock.now += 11  # past the refetch cooldown: an unknown kid may refetch again
        with pytest.raises(Problem):
            await verifier.verify(signed(supa, user_id, keys["ec"], "forged-late", "ES256"))
        assert server.requests == 3


async def test_jwks_refresh_directly_and_unusable_keys_are_skipped(keys):
    with JwksServer() as server:
        serve_keys(server, [(keys["rsa"], "rsa-1", "RS256"), (keys["ec"], "ec-enc", "ES256")])
        server.document["keys"][1]["use"] = "enc"
        # a symmetric key in a JWKS must never become an HS256 verification key
        server.document["keys"].append({"kty": "oct", "kid": "oct-1", "k": b64(b"x" * 32), "alg": "HS256"})
        server.document["keys"].append({"kty": "RSA", "kid": "broken"})
        cache = JwksCache(f"{server.url}/auth/v1/.well-known/jwks.json", algorithms=["ES256", "RS256", "HS256"],
                          max_age=600)  # fmt: skip
        await cache.refresh()
        assert server.requests == 1
        key = await cache.key("rsa-1")
        assert key is not None and key.algorithm_name == "RS256"
        assert await cache.key("oct-1") is None and await cache.key("ec-enc") is None
        assert server.requests == 1  # unknown kids right after a refresh are within the refetch cooldown


async def test_jwks_unreachable_is_503_and_stale_keys_are_not_used(settings, keys):
    clock = FakeMonotonic()
    with JwksServer() as server:
        server.fail = True
        supa = supabase_settings(settings, server.url)
        verifier = TokenVerifier.from_settings(supa, "unused", clock=clock)
        token = signed(supa, uuid.uuid4(), keys["ec"], "ec-1", "ES256")
        with pytest.raises(Problem) as excinfo:
            await verifier.verify(token)
        assert excinfo.value.status == 503 and excinfo.value.code == "auth_unavailable"
        server.fail = False
        serve_keys(server, [(keys["ec"], "ec-1", "ES256")])
        clock.now += 11
        await verifier.verify(token)
        server.fail = True
        clock.now += 600  # cache expired and the refetch fails: the old copy must not be trusted
        with pytest.raises(Problem) as excinfo:
            await verifier.verify(token)
        assert excinfo.value.status == 503


@pytest.mark.parametrize("hs_secret", [None, "legacy-supabase-jwt-secret-legacy-supabase-jwt"])
async def test_hs256_signed_with_the_public_key_is_rejected(settings, keys, hs_secret):
    """The RS/HS confusion attack: an HMAC token keyed with the published public key must never verify."""
    with JwksServer() as server:
        serve_keys(server, [(keys["rsa"], "rsa-1", "RS256")])
        supa = supabase_settings(settings, server.url, supabase_jwt_secret=hs_secret)
        verifier = TokenVerifier.from_settings(supa, "unused")
        assert ("HS256" in verifier.algorithms) == (hs_secret is not None)
        pem = (
            keys["rsa"]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        jwk_text = json.dumps(server.document["keys"][0]).encode()
        claims = claims_for(supa, uuid.uuid4())
        for public in (pem, jwk_text):
            for extra in ({}, {"kid": "rsa-1"}):
                token = handmade_token({"alg": "HS256", "typ": "JWT", **extra}, claims, public)
                with pytest.raises(Problem) as excinfo:
                    await verifier.verify(token)
                assert excinfo.value.status == 401
        # a token whose header claims RS256 but names the EC-less kid with a mismatching key type is refused too
        ec_signed = jwt.encode(claims, keys["ec"], algorithm="ES256", headers={"kid": "rsa-1"})
        with pytest.raises(Problem):
            await verifier.verify(ec_signed)
        if hs_secret:  # the legacy secret itself still works
            assert (await verifier.verify(jwt.encode(claims, hs_secret, algorithm="HS256")))["sub"] == claims["sub"]
