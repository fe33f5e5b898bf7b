"""JWT bearer tokens: verify a token against configured keys, name its tenant.

One key source is configured: an HS256 secret file, a PEM public key (RSA →
RS256, EC P-256 → ES256) or a JSON Web Key Set file (keys chosen by `kid`).
Each key accepts exactly one algorithm, so a token cannot pick a weaker one.
The key file is re-read when it changes, like the tenants file (gateway.watch).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import Unauthenticated
from gateway.settings import GatewaySettings
from gateway.tenants import Tenant, validate_tenant_name
from gateway.watch import WatchedFile

logger = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
JWKS_ALGORITHMS = frozenset({"RS256", "ES256"})


class JwtConfigError(ValueError):
    """A JWT key file cannot be used; the message names the setting."""


@dataclass(frozen=True)
class VerificationKey:
    """A key and the one algorithm it verifies."""

    algorithm: str
    key: Any  # bytes (HS256) or a cryptography public key


KeySet = Mapping[str | None, VerificationKey]
"""Keys by `kid`; a single configured key is stored under None and matches any kid."""


def load_secret(path: Path) -> KeySet:
    """An HS256 secret file (its bytes, less a trailing newline)."""
    secret = _read(path, "GATEWAY_JWT_SECRET_FILE").rstrip(b"\r\n")
    if len(secret) < MIN_SECRET_BYTES:
        raise JwtConfigError(
            f"GATEWAY_JWT_SECRET_FILE {path}: an HS256 secret needs at least "
            f"{MIN_SECRET_BYTES} bytes (e.g. `openssl rand -base64 48`)"
        )
    return {None: VerificationKey("HS256", secret)}


def load_public_key(path: Path) -> KeySet:
    """A PEM public key: RSA (RS256, 2048 bits or more) or EC P-256 (ES256)."""
    data = _read(path, "GATEWAY_JWT_PUBLIC_KEY_FILE")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise JwtConfigError(f"GATEWAY_JWT_PUBLIC_KEY_FILE {path} is not a PEM public key") from exc
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return {None: VerificationKey("RS256", key)}
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return {None: VerificationKey("ES256", key)}
    raise JwtConfigError(
        f"GATEWAY_JWT_PUBLIC_KEY_FILE {path}: use an RSA key of {MIN_RSA_BITS}+ bits "
        "(RS256) or an EC P-256 key (ES256)"
    )


def load_jwks(path: Path) -> KeySet:
    """A JSON Web Key Set: its RS256 and ES256 signing keys by `kid`; others are skipped."""
    try:
        document = json.loads(_read(path, "GATEWAY_JWT_JWKS_FILE"))
        entries = document["keys"]
        if not isinstance(entries, list):
            raise TypeError("keys is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise JwtConfigError(
            f'GATEWAY_JWT_JWKS_FILE {path} is not a JSON Web Key Set ({{"keys": [...]}})'
        ) from exc
    keys: dict[str | None, VerificationKey] = {}
    for index, entry in enumerate(entries):
        kid = entry.get("kid") if isinstance(entry, dict) else None
        try:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                raise ValueError("not a signing key")
            jwk = jwt.PyJWK(entry)
            if jwk.algorithm_name not in JWKS_ALGORITHMS:
                raise ValueError(f"algorithm {jwk.algorithm_name}")
        except (jwt.PyJWTError, ValueError) as exc:
            # The exception text may quote the key: name it by kid only.
            logger.warning("JWKS %s: skipping key %s (%s)", path, kid or f"#{index}", type(exc))
            continue
        keys[kid if isinstance(kid, str) else None] = VerificationKey(jwk.algorithm_name, jwk.key)
    if not keys:
        raise JwtConfigError(f"GATEWAY_JWT_JWKS_FILE {path} holds no RS256 or ES256 signing key")
    return keys


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise JwtConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from exc


# PyJWT's exceptions, most specific first, as (cause label, message).
_FAILURES: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "the JWT has expired: get a new token"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the JWT is not valid yet (nbf or iat)"),
    (jwt.InvalidSignatureError, "bad_signature", "the JWT's signature does not verify"),
)


class JwtVerifier:
    """Verifies JWTs and returns the tenant named by `tenant_claim`."""

    def __init__(
        self,
        path: Path,
        loader: Callable[[Path], KeySet],
        *,
        audience: str,
        issuer: str | None = None,
        tenant_claim: str = "tenant_id",
        leeway_seconds: float = 30.0,
        max_lifetime_seconds: float = 86400.0,
        reload_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        self.issuer = issuer
        self.tenant_claim = tenant_claim
        self.leeway_seconds = leeway_seconds
        self.max_lifetime_seconds = max_lifetime_seconds
        self._clock = clock

        def load(key_file: Path) -> KeySet:
            keys = loader(key_file)
            logger.info("loaded %d JWT key(s) from %s", len(keys), key_file)
            return keys

        # No initial value: a bad key file at start-up stops the gateway.
        self.file = WatchedFile(
            path, load, what="JWT key file", logger=logger, every=reload_seconds
        )

    @property
    def keys(self) -> KeySet:
        """The keys in force."""
        return self.file.value

    def reload(self) -> bool:
        """Re-read the key file if it changed; a bad file is logged and ignored."""
        return self.file.reload()

    def verify(self, token: str) -> Tenant:
        """The tenant of a valid token; Unauthenticated (cause = what failed) otherwise."""
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp"]},
            )
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated(
                f"the JWT's audience is not {self.audience!r} (GATEWAY_JWT_AUDIENCE)",
                cause="wrong_audience",
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated(
                f"the JWT's issuer is not {self.issuer!r} (GATEWAY_JWT_ISSUER)",
                cause="wrong_issuer",
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(
                f"the JWT lacks the {exc.claim!r} claim", cause="missing_claim"
            ) from exc
        except jwt.PyJWTError as exc:
            for kind, cause, message in _FAILURES:
                if isinstance(exc, kind):
                    raise Unauthenticated(message, cause=cause) from exc
            raise Unauthenticated("the JWT cannot be decoded", cause="malformed_token") from exc
        self._check_lifetime(claims)
        return self._tenant_of(claims)

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """A stolen token must stop working: refuse one that lives (from `iat`, or
        from now when it has none) longer than the setting allows."""
        expires = claims["exp"]  # required and checked by jwt.decode: a number
        issued = claims.get("iat")
        start = issued if isinstance(issued, int | float) else self._clock()
        lifetime = expires - start
        if lifetime > self.max_lifetime_seconds + self.leeway_seconds:
            since = "iat" if isinstance(issued, int | float) else "now"
            raise Unauthenticated(
                f"the JWT lives {lifetime:.0f} s (exp - {since}), longer than the "
                f"{self.max_lifetime_seconds:.0f} s allowed (GATEWAY_JWT_MAX_LIFETIME_SECONDS): "
                "issue tokens with a shorter exp",
                cause="lifetime_too_long",
            )

    def _key_for(self, token: str) -> VerificationKey:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("the JWT cannot be decoded", cause="malformed_token") from exc
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            key = self.keys.get(None)
        if key is None:
            raise Unauthenticated(
                "the JWT's key id (kid) is not in GATEWAY_JWT_JWKS_FILE", cause="unknown_key"
            )
        if header.get("alg") != key.algorithm:
            raise Unauthenticated(
                f"the JWT must be signed with {key.algorithm}", cause="wrong_algorithm"
            )
        return key

    def _tenant_of(self, claims: Mapping[str, Any]) -> Tenant:
        value = claims.get(self.tenant_claim)
        if value is None:
            raise Unauthenticated(
                f"the JWT lacks the {self.tenant_claim!r} claim (GATEWAY_JWT_TENANT_CLAIM)",
                cause="missing_claim",
            )
        try:
            validate_tenant_name(value if isinstance(value, str) else "")
        except ValueError as exc:
            raise Unauthenticated(
                f"the JWT's {self.tenant_claim!r} claim is not a valid tenant name",
                cause="bad_tenant",
            ) from exc
        return Tenant(value)


def jwt_verifier(settings: GatewaySettings) -> JwtVerifier | None:
    """The verifier the settings ask for; None when no JWT key source is set."""
    sources: tuple[tuple[Path | None, Callable[[Path], KeySet]], ...] = (
        (settings.jwt_secret_file, load_secret),
        (settings.jwt_public_key_file, load_public_key),
        (settings.jwt_jwks_file, load_jwks),
    )
    for path, loader in sources:
        if path is not None:
            return JwtVerifier(
                path,
                loader,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                tenant_claim=settings.jwt_tenant_claim,
                leeway_seconds=settings.jwt_leeway_seconds,
                max_lifetime_seconds=settings.jwt_max_lifetime_seconds,
                reload_seconds=settings.tenants_reload_seconds,
            )
    return None
