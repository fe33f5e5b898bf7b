"""Systems the gateway is measured against (bench/ingest/)."""
