"""The pipeline as processes on this machine, for the tests, the benchmarks and the demos.

`local` starts the Collector, Prometheus, Alertmanager and the gateway from the
repository's configuration; `supervisor` restarts what dies; `shards`, `thanos` and
`thanos_stack` run the topology past one Prometheus; `prefect_server` a real
Prefect server; `tcpproxy` a loopback proxy a test can cut. The programs that use
them (`make demo`, the build scripts) are in scripts/.
"""
