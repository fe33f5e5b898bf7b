"""TLS on the gRPC and HTTP ports, and tenants taken from client certificates (mTLS).

Certificates are made with `cryptography` in a temporary directory; the servers
are real (grpc.aio, uvicorn) on free ports.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from gateway_fixtures import EXPORT, counter_request, fake_collector, make_tenants
from pydantic import ValidationError

from gateway.app import Gateway
from gateway.auth import Credentials, authorization_from
from gateway.errors import Unauthenticated
from gateway.grpc_server import create_grpc_server
from gateway.server import _HttpServer, http_config
from gateway.settings import GatewaySettings
from gateway.tls import (
    CertificateTenants,
    TlsConfigError,
    client_certificate_from_asgi,
    client_certificate_from_grpc,
    grpc_server_credentials,
)
from stack.pki import SPIFFE, Authority, Issued, Pki


def _settings(tmp_path: Path, pki: Pki, collector_port: int = 1, **overrides: Any) -> Any:
    return GatewaySettings(
        grpc_host="127.0.0.1",
        grpc_port=0,
        http_host="127.0.0.1",
        http_port=0,
        tenants_file=tmp_path / "tenants.json",
        collector_endpoint=f"127.0.0.1:{collector_port}",
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        **overrides,
    )


# -- settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls_cert_file": "a.pem"}, "set both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE"),
        ({"tls_client_ca_file": "ca.pem"}, "needs GATEWAY_TLS_CERT_FILE"),
        (
            {"tls_cert_file": "a", "tls_key_file": "b", "tls_client_tenant": "uri"},
            "needs GATEWAY_TLS_CLIENT_CA_FILE",
        ),
        (
            {
                "tls_cert_file": "a",
                "tls_key_file": "b",
                "tls_client_ca_file": "c",
                "tls_client_tenant": "uri",
            },
            "needs GATEWAY_TLS_CLIENT_URI_PREFIX",
        ),
    ],
)
def test_tls_settings_that_do_not_fit_together_are_refused(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**overrides)  # type: ignore[arg-type]


def test_tls_is_off_by_default_and_missing_files_name_their_setting(tmp_path: Path) -> None:
    assert grpc_server_credentials(GatewaySettings()) is None
    settings = GatewaySettings(tls_cert_file=tmp_path / "no.crt", tls_key_file=tmp_path / "no.key")
    with pytest.raises(TlsConfigError, match="GATEWAY_TLS_KEY_FILE: cannot read"):
        grpc_server_credentials(settings)
    with pytest.raises(TlsConfigError, match="GATEWAY_TLS_CERT_FILE: cannot read"):
        http_config(settings, object())


# -- certificate → tenant --------------------------------------------------------------


def test_a_certificate_names_its_tenant_by_uri_or_common_name(pki: Pki) -> None:
    acme = pki.acme_uri.cert.read_text()
    globex = pki.globex_cn.cert.read_text()
    by_uri = CertificateTenants("uri", SPIFFE)
    assert by_uri.tenant_of(acme) == "acme"
    with pytest.raises(ValueError, match=f"expected one SAN URI {SPIFFE}<tenant>"):
        by_uri.tenant_of(globex)
    with pytest.raises(ValueError, match="names no tenant"):
        CertificateTenants("uri", "spiffe://other.org/tenant/").tenant_of(acme)
    by_cn = CertificateTenants("common_name")
    assert by_cn.tenant_of(globex) == "globex"
    assert by_cn.tenant_of(acme) == "agent-7"


def test_a_certificate_naming_two_tenants_is_refused(tmp_path: Path) -> None:
    # Readers disagree on which of two CNs counts (the first, the last, the most
    # specific): the gateway takes none rather than guess.
    ca = Authority(tmp_path)
    two_cns = ca.issue("two-cns", "acme", more_common_names=("globex",)).cert.read_text()
    with pytest.raises(ValueError, match="names 2 tenants: expected one subject common name"):
        CertificateTenants("common_name").tenant_of(two_cns)
    two_uris = ca.issue(
        "two-uris",
        "agent-7",
        x509.UniformResourceIdentifier(f"{SPIFFE}acme"),
        x509.UniformResourceIdentifier(f"{SPIFFE}globex"),
    ).cert.read_text()
    with pytest.raises(ValueError, match=f"names 2 tenants: expected one SAN URI {SPIFFE}"):
        CertificateTenants("uri", SPIFFE).tenant_of(two_uris)
    # The same name twice names one tenant.
    twice = ca.issue("twice", "acme", more_common_names=("acme",)).cert.read_text()
    assert CertificateTenants("common_name").tenant_of(twice) == "acme"


# -- gRPC ------------------------------------------------------------------------------


def _channel(port: int, pki: Pki, client: Issued | None = None) -> grpc.aio.Channel:
    key, chain = client.pair if client else (None, None)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_file.read_bytes(), private_key=key, certificate_chain=chain
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


def test_grpc_over_tls_with_an_api_key(tmp_path: Path, pki: Pki) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with fake_collector() as (collector, collector_port):
            gateway = Gateway.create(_settings(tmp_path, pki, collector_port))
            # The gateway's own server: with TLS settings its port is a TLS port.
            server, port = create_grpc_server(gateway)
            await server.start()
            try:
                async with _channel(port, pki) as channel:
                    export = channel.unary_unary(EXPORT, None, None)
                    await export(
                        counter_request().SerializeToString(),
                        metadata=(("authorization", f"Bearer {keys['acme']}"),),
                        timeout=10,
                    )
                # A plaintext client cannot talk to the TLS port.
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    with pytest.raises(grpc.aio.AioRpcError) as failure:
                        await channel.unary_unary(EXPORT, None, None)(b"", timeout=3)
                    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                await server.stop(None)
                await gateway.forwarder.close()
        assert len(collector.received) == 1

    asyncio.run(scenario())


@asynccontextmanager
async def _mtls_whoami_server(gateway: Gateway) -> AsyncIterator[int]:
    """A gRPC server with one method that authenticates exactly as transports must
    (authorization values joined, peer, verified client certificate) and answers
    with the tenant."""

    async def whoami(body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        del body
        credentials = Credentials(
            authorization_from(
                v for k, v in context.invocation_metadata() or () if k == "authorization"
            ),
            peer=context.peer(),
            client_certificate=client_certificate_from_grpc(context.auth_context()),
        )
        try:
            tenant = gateway.authenticator.authenticate(credentials)
        except Unauthenticated as exc:
            await context.abort(exc.grpc_status, f"{exc} [{exc.cause}]")
        return tenant.id.encode()

    server = grpc.aio.server()
    rpc = grpc.unary_unary_rpc_method_handler(whoami)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {"Who": rpc}),))
    credentials = grpc_server_credentials(gateway.settings)
    assert credentials is not None
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def _whoami(port: int, pki: Pki, client: Issued | None, key: str | None = None) -> str:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    async with _channel(port, pki, client) as channel:
        answer: bytes = await channel.unary_unary("/t.S/Who", None, None)(
            b"", metadata=metadata, timeout=5
        )
    return answer.decode()


def test_grpc_mtls_takes_the_tenant_from_the_certificate_uri(tmp_path: Path, pki: Pki) -> None:
    keys = make_tenants(tmp_path / "tenants.json", "acme", "globex")
    settings = _settings(
        tmp_path,
        pki,
        tls_client_ca_file=pki.ca.cert_file,
        tls_client_tenant="uri",
        tls_client_uri_prefix=SPIFFE,
    )

    async def scenario() -> None:
        gateway = Gateway.create(settings)
        async with _mtls_whoami_server(gateway) as port:
            assert await _whoami(port, pki, pki.acme_uri) == "acme"
            assert await _whoami(port, pki, pki.acme_uri, keys["acme"]) == "acme"
            cases: tuple[tuple[Issued, str | None, str], ...] = (
                (pki.acme_uri, keys["globex"], "conflict"),
                (pki.globex_cn, None, "certificate"),
            )
            for client, key, cause in cases:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await _whoami(port, pki, client, key)
                assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert f"[{cause}]" in (failure.value.details() or "")
            # No certificate, or one from another CA: the handshake itself fails.
            for stranger in (None, pki.rogue):
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await _whoami(port, pki, stranger, keys["acme"])
                assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        await gateway.forwarder.close()

    asyncio.run(scenario())


def test_grpc_mtls_by_common_name_and_unknown_tenants(tmp_path: Path, pki: Pki) -> None:
    make_tenants(tmp_path / "tenants.json", "globex")
    settings = _settings(
        tmp_path, pki, tls_client_ca_file=pki.ca.cert_file, tls_client_tenant="common_name"
    )

    async def scenario() -> None:
        gateway = Gateway.create(settings)
        async with _mtls_whoami_server(gateway) as port:
            assert await _whoami(port, pki, pki.globex_cn) == "globex"
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await _whoami(port, pki, pki.acme_uri)  # CN agent-7: not a tenant
            assert "'agent-7', which is not registered" in (failure.value.details() or "")
            assert "[unknown_tenant]" in (failure.value.details() or "")
        await gateway.forwarder.close()

    asyncio.run(scenario())


# -- HTTP ------------------------------------------------------------------------------


@asynccontextmanager
async def _https_whoami(settings: GatewaySettings) -> AsyncIterator[str]:
    """uvicorn with the gateway's TLS options, serving an app that authenticates
    the way the HTTP transport must (certificate from the ASGI scope)."""
    gateway = Gateway.create(settings)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        del receive
        credentials = Credentials(
            None, peer="", client_certificate=client_certificate_from_asgi(scope)
        )
        try:
            status, body = 200, gateway.authenticator.authenticate(credentials).id
        except Unauthenticated as exc:
            status, body = exc.http_status, exc.cause
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})

    server = _HttpServer(http_config(settings, app))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await task
        await gateway.forwarder.close()


def _client_context(pki: Pki, client: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca.cert_file)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def test_https_with_mtls_hands_the_certificate_to_the_app(tmp_path: Path, pki: Pki) -> None:
    make_tenants(tmp_path / "tenants.json", "acme")
    settings = _settings(
        tmp_path,
        pki,
        tls_client_ca_file=pki.ca.cert_file,
        tls_client_tenant="uri",
        tls_client_uri_prefix=SPIFFE,
    )

    async def scenario() -> None:
        async with _https_whoami(settings) as url:
            async with httpx.AsyncClient(verify=_client_context(pki, pki.acme_uri)) as client:
                answer = await client.get(url)
                assert (answer.status_code, answer.text) == (200, "acme")
            for without in (None, pki.rogue):
                async with httpx.AsyncClient(verify=_client_context(pki, without)) as client:
                    with pytest.raises(httpx.TransportError):
                        await client.get(url)

    asyncio.run(scenario())


def test_https_without_mtls_serves_any_client(tmp_path: Path, pki: Pki) -> None:
    make_tenants(tmp_path / "tenants.json", "acme")

    async def scenario() -> None:
        async with _https_whoami(_settings(tmp_path, pki)) as url:
            async with httpx.AsyncClient(verify=_client_context(pki, None)) as client:
                answer = await client.get(url)
                assert (answer.status_code, answer.text) == (401, "missing")
            async with httpx.AsyncClient() as client:
                with pytest.raises(httpx.TransportError):
                    await client.get(url.replace("https", "http"))

    asyncio.run(scenario())
