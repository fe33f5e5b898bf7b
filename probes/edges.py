"""Quick probes of the HTTP edge with A's key and without: fleet API, status, metrics,
readyz, huge and many headers, header-only requests, tiny chunks.

Run: PYTHONPATH=$PWD .venv/bin/python probes/edges.py
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench import bench_isolation as bench
from bench import isolation_attacks as attacks
from gateway import tenants
from stack.local import LocalStack, collector_binary


def raw(port: int, data: bytes, wait: float = 3.0, source: str = "127.0.0.1") -> str:
    """Send `data` on a fresh connection; the first line answered (or what happened)."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=wait, source_address=(source, 0)
    ) as s:
        s.sendall(data)
        try:
            got = s.recv(300)
        except TimeoutError:
            return f"no answer in {wait:.0f} s"
    return got.split(b"\r\n", 1)[0].decode("latin-1") or "closed"


def main() -> None:
    run_dir = bench.REPO / ".run" / "probe-edges"
    run_dir.mkdir(parents=True, exist_ok=True)
    table = tenants.TenantTable()
    keys = {}
    for name in ("alpha", "bravo"):
        table, keys[name] = tenants.add_key(table, name)
    tenants.save(run_dir / "tenants.json", table)
    stack = LocalStack(run_dir, tenants_file=run_dir / "tenants.json")
    try:
        collector = stack.start_collector(collector_binary())
        stack.wait_ready(collector, timeout=60)
        gateway = stack.start_gateway()
        stack.wait_ready(gateway, timeout=60)
        url, port = stack.gateway_http_url, stack.ports.gateway_http
        a = {"authorization": f"Bearer {keys['alpha']}"}
        # B exports once so that the fleet has B's agent.
        body = bench.b_request(1)
        httpx.post(
            f"{url}/v1/metrics",
            content=body,
            headers={
                "authorization": f"Bearer {keys['bravo']}",
                "content-type": "application/x-protobuf",
            },
        )
        with httpx.Client(timeout=10) as c:
            fleet = c.get(f"{url}/api/fleet", headers=a)
            print("A /api/fleet:", fleet.status_code, "bravo" in fleet.text, fleet.text[:200])
            forget = c.post(
                f"{url}/api/fleet/forget",
                headers=a,
                json={"tenant_id": "bravo", "instances": ["b-1"]},
            )
            print("A forget B's agent:", forget.status_code, forget.text[:120])
            print("stranger /api/fleet:", c.get(f"{url}/api/fleet").status_code)
            print("stranger /metrics on HTTP port:", c.get(f"{url}/metrics").status_code)
            ready = c.get(f"{url}/readyz")
            print("stranger /readyz:", ready.status_code, ready.text[:200])
            for path in ("/docs", "/openapi.json", "/redoc", "/status/..%2f..%2fsettings.py"):
                print(f"stranger {path}:", c.get(f"{url}{path}").status_code)
            legacy = c.post(
                f"{url}/api/metrics/agent/bravo",
                headers=a,
                json={"agent_type": "connector", "bytes_sent": 1},
            )
            print("A legacy as bravo:", legacy.status_code, legacy.text[:120])
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
        print(
            "many headers, no key:",
            raw(port, b"GET /healthz HTTP/1.1\r\nHost: g\r\n" + many + b"\r\n"),
        )
        print(
            "one 1 MB header, no key:",
            raw(port, b"GET /healthz HTTP/1.1\r\nHost: g\r\nX: " + b"a" * 1_000_000 + b"\r\n\r\n"),
        )
        print(
            "header-only POST with A's key, no body:",
            raw(
                port,
                b"POST /v1/metrics HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
                + keys["alpha"].encode()
                + b"\r\nContent-Type: application/x-protobuf\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n",
                wait=20,
            ),
        )
        # Chunked body in 1-byte chunks, sent at once.
        raw_body = attacks._request({"service.name": "a"}, [attacks._gauge("a.c", 1.0)])
        data = raw_body.SerializeToString()
        chunks = b"".join(b"1\r\n" + bytes([x]) + b"\r\n" for x in data) + b"0\r\n\r\n"
        began = time.monotonic()
        print(
            "1-byte chunks with A's key:",
            raw(
                port,
                b"POST /v1/metrics HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
                + keys["alpha"].encode()
                + b"\r\nContent-Type: application/x-protobuf\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunks,
            ),
            f"{time.monotonic() - began:.2f} s",
        )
        big = b"1\r\nx\r\n" * 500_000 + b"0\r\n\r\n"
        began = time.monotonic()
        print(
            "500k 1-byte chunks (3.5 MB) with A's key:",
            raw(
                port,
                b"POST /v1/metrics HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer "
                + keys["alpha"].encode()
                + b"\r\nContent-Type: application/x-protobuf\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + big,
                wait=30,
            ),
            f"{time.monotonic() - began:.2f} s, gateway RSS {bench.rss_mib(gateway):.0f} MiB",
        )
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
