"""The pipeline as processes on this machine, for the tests, the benchmarks and the demos.

`local` starts the Collector, Prometheus, Alertmanager and the gateway from the
repository's configuration; `supervisor` restarts what dies; `shards`, `thanos` and
`thanos_stack` run the topology past one Prometheus; `prefect_server` a real
Prefect server; `redis_server` a Redis for the gateway's shared state; `tcpproxy`
a loopback proxy a test can cut; `pki` self-signed certificates and a test CA.
The programs that use them (`make demo`, the build scripts) are in scripts/.
"""
