"""The legacy JSON endpoint with hostile bodies: deep nesting, huge numbers, many keys.

Run: PYTHONPATH=$PWD .venv/bin/python probes/legacy_json.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests/unit"), str(ROOT / "tests/unit/gateway")]

from gateway_fixtures import run  # noqa: E402
from gateway_http_fixtures import http_gateway  # noqa: E402
from test_loop_stalls import ticking  # noqa: E402

BODIES = {
    "nested 30,000 deep": b"[" * 30_000 + b"]" * 30_000,
    "nested object 10,000 deep": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "number of 60,000 digits": b'{"agent_type":"connector","bytes_sent":' + b"9" * 60_000 + b"}",
    "float of 60,000 digits": b'{"agent_type":"connector","bytes_sent":1.' + b"9" * 60_000 + b"}",
    "6,000 keys": b"{" + b",".join(b'"k%d":1' % i for i in range(6_000)) + b"}",
    "metric name 60 KB": b'{"agent_type":"connector","agent_id":"' + b"a" * 60_000 + b'"}',
}


async def one(tmp: Path, name: str, body: bytes) -> None:
    async with http_gateway(tmp) as http, ticking() as ticker:
        answer = await http.client.post(
            "/api/metrics/agent/acme",
            content=body,
            headers={"content-type": "application/json", **http.auth("acme")},
            timeout=60,
        )
    print(
        f"{name} ({len(body) / 1e6:.1f} MB): {answer.status_code} {answer.text[:110]!r}; "
        f"loop hold {ticker.longest * 1000:.0f} ms CPU",
        flush=True,
    )


if __name__ == "__main__":
    for name, body in BODIES.items():
        with tempfile.TemporaryDirectory() as tmp:
            run(one(Path(tmp), name, body))
