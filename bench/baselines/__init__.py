"""Systems the gateway is measured against (bench/bench_ingest.py)."""
