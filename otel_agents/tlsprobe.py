"""Does the gateway's port speak TLS? One handshake, to explain a failing connection.

Where this sits: agent code ──(otel_agents: exporter hints, `otel-agents check` ← *tlsprobe*)
──▶ gateway.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Literal

from otel_agents.certificate import read_regular_file

Verdict = Literal["tls", "untrusted", "plaintext", "unreachable"]


@dataclass(frozen=True)
class TlsProbe:
    """What one TLS handshake with host:port showed."""

    verdict: Verdict
    """tls: handshake and certificate fine; untrusted: TLS with a certificate not trusted here;
    plaintext: something answers but not with TLS; unreachable: no TCP connection."""
    detail: str

    @property
    def speaks_tls(self) -> bool:
        """True when the server completed a TLS handshake (trusted or not)."""
        return self.verdict in ("tls", "untrusted")


def probe_tls(host: str, port: int, ca_file: str | None, timeout_s: float = 5.0) -> TlsProbe:
    """Connect to host:port and try a TLS handshake (ALPN h2, as gRPC does)."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        return TlsProbe("unreachable", f"cannot connect to {host}:{port} ({exc.strerror or exc})")
    try:
        # Read here, not by ssl from the path: a FIFO would block ssl's open forever.
        pem = read_regular_file(ca_file, 16 << 20) if ca_file else None
        cadata = pem.decode("ascii", "replace") if pem is not None else None
        context = ssl.create_default_context(cadata=cadata)
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        return TlsProbe("unreachable", f"cannot read the CA file {ca_file!r} ({exc})")
    context.set_alpn_protocols(["h2", "http/1.1"])
    try:
        with raw, context.wrap_socket(raw, server_hostname=host) as tls:
            return TlsProbe("tls", f"TLS {tls.version()}, certificate verified")
    except ssl.SSLCertVerificationError as exc:
        return TlsProbe(
            "untrusted", f"TLS, but the certificate is not trusted: {exc.verify_message}"
        )
    except (ssl.SSLError, OSError) as exc:
        return TlsProbe("plaintext", str(exc))
