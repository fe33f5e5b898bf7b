"""Multi-tenant OTLP metrics gateway: authenticate, stamp tenant_id, forward to the Collector."""
