"""Are refused tiny-chunk connections freed? Live gateway in this process; after N
refused connections, count the protocol objects and tasks still alive.

Run: PYTHONPATH=$PWD .venv/bin/python probes/chunk_leak.py [connections] [key|stranger]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests/unit"), str(ROOT / "tests/unit/gateway")]

from live_gateway import live_gateway  # noqa: E402

SETTLE = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0


def main(connections: int, who: str) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        live_gateway(Path(tmp), auth_failure_limit=0) as live,
    ):
        auth = f"Authorization: Bearer {live.keys['acme']}\r\n" if who == "key" else ""
        data = (
            (
                f"POST /v1/metrics HTTP/1.1\r\nHost: g\r\n{auth}"
                "Content-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
            + b"1\r\nx\r\n" * 500_000
            + b"0\r\n\r\n"
        )

        async def flood() -> Counter[str]:
            seen: Counter[str] = Counter()
            for _ in range(connections):
                reader, writer = await asyncio.open_connection("127.0.0.1", live.http_port)
                writer.write(data)
                line = await reader.readline()
                seen[line[:12].decode()] += 1
                writer.close()
            return seen

        print(asyncio.run(flood()))
        time.sleep(SETTLE)  # the lingering ones close
        gc.collect()
        kinds = Counter(type(o).__name__ for o in gc.get_objects())
        protocols = [o for o in gc.get_objects() if type(o).__name__ == "BoundedProtocol"]
        if protocols:
            p = protocols[0]
            print(
                "closing:",
                p.transport.is_closing(),
                "cycle done:",
                p.cycle and p.cycle.response_complete,
                "disconnected:",
                p.cycle and p.cycle.disconnected,
            )
            for r in gc.get_referrers(p):
                print("  held by", type(r).__name__, str(r)[:150])
        print(
            {
                k: kinds[k]
                for k in (
                    "BoundedProtocol",
                    "RequestResponseCycle",
                    "Task",
                    "_SelectorSocketTransport",
                    "Connection",
                )
            }
        )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 300, sys.argv[2] if len(sys.argv) > 2 else "key"
    )
