"""JWT bearer tokens: key sources, claim checks, clear refusals, key file reload."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from gateway_fixtures import make_tenants
from pydantic import ValidationError

from gateway.auth import Authenticator, Credentials
from gateway.errors import Unauthenticated
from gateway.jwt_auth import JwtConfigError, JwtVerifier, jwt_verifier, load_secret
from gateway.settings import GatewaySettings
from gateway.tenants import Tenant, TenantRegistry

SECRET = b"s" * 40
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": "otel-gateway",
        "iss": "https://idp.example",
        "iat": now,
        "exp": now + 300,
        "tenant_id": "acme",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _token(
    key: Any = SECRET, algorithm: str = "HS256", kid: str | None = None, **claims: Any
) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(_claims(**claims), key, algorithm=algorithm, headers=headers)


def _authenticator(tmp_path: Path, **settings: Any) -> Authenticator:
    make_tenants(tmp_path / "tenants.json", "acme", "globex")
    if not any(k.startswith("jwt_") and k.endswith("_file") for k in settings):
        (tmp_path / "secret").write_bytes(SECRET + b"\n")
        settings["jwt_secret_file"] = tmp_path / "secret"
    config = GatewaySettings(tenants_file=tmp_path / "tenants.json", **settings)
    return Authenticator.create(config, TenantRegistry(config.tenants_file))


def _refusal(auth: Authenticator, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as refused:
        auth.authenticate(Credentials(f"Bearer {token}"))
    assert token not in str(refused.value)
    assert token.split(".")[2] not in str(refused.value)
    return refused.value


def test_an_hs256_token_names_its_tenant(tmp_path: Path) -> None:
    auth = _authenticator(tmp_path)
    assert auth.authenticate(Credentials(f"Bearer {_token()}")) == Tenant("acme")
    assert auth.authenticate(Credentials(f"Bearer {_token(tenant_id='globex')}")) == Tenant(
        "globex"
    )


@pytest.mark.parametrize(
    ("private_key", "algorithm"), [(RSA_KEY, "RS256"), (EC_KEY, "ES256")], ids=["rsa", "ec"]
)
def test_a_public_key_verifies_its_own_algorithm_only(
    tmp_path: Path, private_key: Any, algorithm: str
) -> None:
    (tmp_path / "key.pem").write_bytes(_pem(private_key))
    auth = _authenticator(tmp_path, jwt_public_key_file=tmp_path / "key.pem")
    token = _token(private_key, algorithm)
    assert auth.authenticate(Credentials(f"Bearer {token}")) == Tenant("acme")
    # The classic confusion: an HMAC token keyed with the public key's PEM.
    forged = _refusal(auth, jwt.encode(_claims(), b"x" * 64, algorithm="HS256"))
    assert (forged.cause, forged.message) == (
        "wrong_algorithm",
        f"the JWT must be signed with {algorithm}",
    )


def test_a_jwks_file_picks_the_key_by_kid_and_skips_unusable_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True)
    hmac_jwk = {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}
    document = {
        "keys": [
            {**rsa_jwk, "kid": "r1", "use": "sig"},
            {**ec_jwk, "kid": "e1"},
            {**rsa_jwk, "kid": "enc", "use": "enc"},
            hmac_jwk,
        ]
    }
    (tmp_path / "jwks.json").write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="gateway.jwt_auth"):
        auth = _authenticator(tmp_path, jwt_jwks_file=tmp_path / "jwks.json")
    assert "skipping key enc" in caplog.text
    assert "skipping key hmac" in caplog.text
    assert "c2VjcmV0" not in caplog.text
    rs = _token(RSA_KEY, "RS256", kid="r1", tenant_id="globex")
    assert auth.authenticate(Credentials(f"Bearer {rs}")) == Tenant("globex")
    es = _token(EC_KEY, "ES256", kid="e1")
    assert auth.authenticate(Credentials(f"Bearer {es}")) == Tenant("acme")
    assert _refusal(auth, _token(RSA_KEY, "RS256", kid="nope")).cause == "unknown_key"
    assert _refusal(auth, _token(RSA_KEY, "RS256", kid="e1")).cause == "wrong_algorithm"
    assert _refusal(auth, _token(b"k" * 32, "HS256", kid="hmac")).cause == "unknown_key"


@pytest.mark.parametrize(
    ("claims", "cause", "message"),
    [
        # Times as offsets from now, resolved when the test runs (not at collection).
        ({"exp": -120}, "expired", "the JWT has expired"),
        ({"nbf": 600}, "not_yet_valid", "not valid yet"),
        ({"iat": 600}, "not_yet_valid", "not valid yet"),
        ({"aud": "grafana"}, "wrong_audience", "audience is not 'otel-gateway'"),
        ({"aud": None}, "missing_claim", "lacks the 'aud' claim"),
        ({"exp": None}, "missing_claim", "lacks the 'exp' claim"),
        ({"iss": "https://evil.example"}, "wrong_issuer", "issuer is not"),
        ({"tenant_id": None}, "missing_claim", "lacks the 'tenant_id' claim"),
        ({"tenant_id": "Not Valid"}, "bad_tenant", "not a valid tenant name"),
        ({"tenant_id": ["acme"]}, "bad_tenant", "not a valid tenant name"),
        ({"tenant_id": "initech"}, "unknown_tenant", "'initech', which is not registered"),
        # Longer than GATEWAY_JWT_MAX_LIFETIME_SECONDS (1 day): from iat, else from now.
        ({"exp": 10**12}, "lifetime_too_long", "(exp - iat), longer than the 86400 s allowed"),
        ({"exp": 2 * 86400, "iat": None}, "lifetime_too_long", "(exp - now), longer than"),
        ({"exp": 600, "iat": -3 * 86400}, "lifetime_too_long", "GATEWAY_JWT_MAX_LIFETIME_SECONDS"),
    ],
)
def test_each_bad_token_is_refused_with_its_cause(
    tmp_path: Path, claims: dict[str, Any], cause: str, message: str
) -> None:
    auth = _authenticator(tmp_path, jwt_issuer="https://idp.example")
    now = int(time.time())
    claims = {
        k: now + v if k in ("exp", "nbf", "iat") and v is not None else v for k, v in claims.items()
    }
    refused = _refusal(auth, _token(**claims))
    assert (refused.cause, refused.reason) == (cause, "unauthenticated")
    assert message in refused.message


def test_the_maximum_lifetime_is_a_setting(tmp_path: Path) -> None:
    now = int(time.time())
    week = _token(exp=now + 7 * 86400)
    assert _refusal(_authenticator(tmp_path), week).cause == "lifetime_too_long"
    auth = _authenticator(tmp_path, jwt_max_lifetime_seconds=7 * 86400)
    assert auth.authenticate(Credentials(f"Bearer {week}")) == Tenant("acme")
    day = _token(exp=now + 86400)
    assert _authenticator(tmp_path).authenticate(Credentials(f"Bearer {day}")) == Tenant("acme")


def test_small_clock_skew_is_tolerated(tmp_path: Path) -> None:
    auth = _authenticator(tmp_path, jwt_leeway_seconds=30)
    now = int(time.time())
    skewed = _token(exp=now - 10, nbf=now + 10, iat=now + 10)
    assert auth.authenticate(Credentials(f"Bearer {skewed}")) == Tenant("acme")


def test_a_bad_signature_and_garbage_are_refused(tmp_path: Path) -> None:
    auth = _authenticator(tmp_path)
    header, _, signature = _token().split(".")
    tampered = f"{header}.{_token(tenant_id='globex').split('.')[1]}.{signature}"
    assert _refusal(auth, tampered).cause == "bad_signature"
    assert _refusal(auth, _token(b"t" * 40)).cause == "bad_signature"
    assert _refusal(auth, "abc.def.ghi").cause == "malformed_token"
    unsigned = jwt.encode(_claims(), "", algorithm="none")
    with pytest.raises(Unauthenticated) as refused:
        auth.authenticate(Credentials(f"Bearer {unsigned}"))
    assert refused.value.cause == "wrong_algorithm"


def test_the_claim_and_known_tenant_rule_are_settings(tmp_path: Path) -> None:
    auth = _authenticator(tmp_path, jwt_tenant_claim="org", require_known_tenant=False)
    token = _token(org="initech", tenant_id=None)
    assert auth.authenticate(Credentials(f"Bearer {token}")) == Tenant("initech")


def test_api_keys_still_work_beside_jwts(tmp_path: Path) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")
    (tmp_path / "secret").write_bytes(SECRET)
    settings = GatewaySettings(
        tenants_file=tmp_path / "tenants.json", jwt_secret_file=tmp_path / "secret"
    )
    auth = Authenticator.create(settings, TenantRegistry(settings.tenants_file))
    assert auth.authenticate(Credentials(f"Bearer {keys['acme']}")) == Tenant("acme")


def test_the_key_file_is_reloaded_and_a_bad_one_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    verifier = JwtVerifier(secret_file, load_secret, audience="otel-gateway")
    assert verifier.verify(_token()) == Tenant("acme")
    assert not verifier.reload()

    secret_file.write_bytes(b"n" * 48)
    os.utime(secret_file, (1, 1))
    assert verifier.reload()
    assert verifier.verify(_token(b"n" * 48)) == Tenant("acme")
    with pytest.raises(Unauthenticated):
        verifier.verify(_token())

    secret_file.write_bytes(b"short")
    with caplog.at_level(logging.ERROR, logger="gateway.jwt_auth"):
        assert not verifier.reload()
    assert "keeping the previous one" in caplog.text
    assert "short" not in caplog.text
    assert verifier.verify(_token(b"n" * 48)) == Tenant("acme")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("jwt_secret_file", b"too short", "at least 32 bytes"),
        ("jwt_public_key_file", b"not a key", "is not a PEM public key"),
        ("jwt_public_key_file", None, "cannot read"),
        ("jwt_jwks_file", b'{"keys": []}', "holds no RS256 or ES256 signing key"),
        ("jwt_jwks_file", b"[]", "is not a JSON Web Key Set"),
    ],
)
def test_an_unusable_key_file_stops_start_up_naming_the_setting(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(JwtConfigError, match=message) as failure:
        jwt_verifier(GatewaySettings(**{name: path}))  # type: ignore[arg-type]
    assert f"GATEWAY_{name.upper()}" in str(failure.value)


def test_a_small_rsa_key_is_refused(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the point)
    (tmp_path / "key.pem").write_bytes(_pem(small))
    with pytest.raises(JwtConfigError, match="2048"):
        jwt_verifier(GatewaySettings(jwt_public_key_file=tmp_path / "key.pem"))


def test_only_one_key_source_may_be_set(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="set only one of GATEWAY_JWT_SECRET_FILE"):
        GatewaySettings(jwt_secret_file=tmp_path / "a", jwt_jwks_file=tmp_path / "b")
    assert jwt_verifier(GatewaySettings()) is None
