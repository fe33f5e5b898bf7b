"""gRPC interceptors (grpcio, sync and asyncio) that count a connector's calls.

Where this sits: connector's gRPC calls ──(otel_agents: *interceptors*)──▶ ConnectorMetrics.

What is counted, on each side of each call (unary and streaming alike):

- `connector_queries_processed_total`: 1 when the call ends, whatever its status, so
  that errors / queries is a failure ratio.
- `connector_errors_total{error_type}`: 1 when the call ends with a non-OK status;
  `error_type` is the status code's kind (`unavailable`, `rejected` or `failed`,
  `otel_agents.connector.ERROR_TYPES`). A server
  counts the status its handler produced (an exception without a code is `UNKNOWN`, a
  response stream abandoned by the client is `CANCELLED`); a client, the status it got.
- `connector_bytes_sent_total`, `connector_records_sent_total`: the messages *this
  side* sends (a client's requests, a server's responses), each when it is handed to
  gRPC, also on calls that fail later. A server wraps the handler's response
  serializer, so bytes are the exact serialized length. A client sees messages before
  serialization: bytes are `size_of(message)` (default `message_size`: `len()` of
  bytes, `ByteSize()` of protobuf messages, which costs about a second serialization).
  Records are `records_of(message)` when given (e.g. `otel_agents.arrow.ipc_row_count`
  for Arrow IPC payloads), else not counted.

`instrument_channel(channel, metrics)` does all of it for a sync client channel in one
call: the client interceptor, Arrow records (`otel_agents.arrow.ipc_row_count`) and the
connectivity watch behind `connector_connected`.

Calls behave exactly as without the interceptors: exceptions propagate unchanged,
streams stay lazy (a message is counted when gRPC pulls it), and a failure while
counting is logged once and never reaches the call.
"""

from otel_agents.grpc_instrumentation._counting import Measure, message_size
from otel_agents.grpc_instrumentation.channel import instrument_channel
from otel_agents.grpc_instrumentation.client import ClientInterceptor, aio_client_interceptors
from otel_agents.grpc_instrumentation.connectivity import watch_aio_connectivity, watch_connectivity
from otel_agents.grpc_instrumentation.server import AioServerInterceptor, ServerInterceptor

__all__ = [
    "AioServerInterceptor",
    "ClientInterceptor",
    "Measure",
    "ServerInterceptor",
    "aio_client_interceptors",
    "instrument_channel",
    "message_size",
    "watch_aio_connectivity",
    "watch_connectivity",
]
