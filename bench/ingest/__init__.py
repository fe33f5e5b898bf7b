"""OTLP ingest capacity of the gateway, side by side with baselines, in one run.

Run: `.venv/bin/python -m bench.ingest` (about 22 minutes; `--quick`: one short
round, about two minutes). Starts the real Collector and, one after the other, each
system under test (SUT): the gateway, the Collector alone, the bare Python gRPC hop,
the previous JSON design, gateways sharing a port, the gateway with its state in Redis
(one process, and two workers; each SUT with a redis-server of its own on the SUT's
core, whose CPU is reported apart), and a trivial Go server (the load generator's own
ceiling). The SUT runs on core 0; the Go load generator
(bench/loadgen) and the Collector share core 1 (`--sut-cpus`, `--load-cpus`,
`--collector-cpus` move them on a bigger machine).

Each case is a closed loop (`--concurrency` workers sending back to back) over a
measured window after a warm-up. Besides the Go generator's synthetic requests of 20
and 500 points, the `scale-mix` case sends what the scale benchmark's agents send (5
connectors and 5 data agents per tenant, 34.5 points per request on average, gzip,
from the real `otel_agents` instruments via bench/simagents.py), from a Python sender
(bench/ingest/sender.py) on the generator's core. A SUT's CPU is read from
/proc (utime + stime of its processes and their children) when the window opens and
closes, so figures are per
core: requests per CPU-second of the SUT, CPU µs per request. Then the latency phase:
open loop at half the gateway's median maximum, through the gateway and straight to
the Collector at the same rate; added latency = the difference; and the scale mix at
`--scale-rate` (what 10,000 agents exporting every 30 s send), whose gateway CPU per
request is the cost of a real request in production (the `paced` cases run the same
open loop in the throughput phase, for the gateway in memory and with Redis: what
an agent costs Redis). Cases repeat
`--rounds` times in a rotating order; tables show medians. Results:
bench/results/ingest.json. Nothing here asserts a timing.
"""
