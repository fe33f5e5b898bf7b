"""Protobuf bodies decoded in slices, with a bound on their structure.

The protobuf parser holds the event loop (and the GIL) for as long as one call
lasts, and a call's cost depends on how many messages the bytes hold, not on
their size alone: 8 MiB of empty nested messages cost most of a second. So a
large body is never parsed in one call. A message longer than `SLICE_BYTES` is
walked field by field; runs of small fields are merged into it a slice at a
time, and a long field holding a message is decoded the same way, recursively.
Parsing the parts one after another gives exactly what parsing the whole gives
(protobuf's merge rules), less the fields unknown to OTLP: they are left out
(the walk skips them; a part parsed whole drops them at once, at a cost bounded
by its size), as a field the gateway cannot read is one it cannot check or
stamp. Between slices, other requests run (gateway.work).

The walk counts the fields it steps over: a legitimate request of N data points
takes a few per point, so more than `WALK_FIELDS_PER_POINT` times
`max_data_points_per_request` refuses the request (`too_many_data_points`)
before its parts are parsed, whatever they are made of.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from gateway.chain import Decoding
from gateway.errors import InvalidRequest, TooManyDataPoints
from gateway.work import Steps

SLICE_BYTES = 128 * 1024
"""Longest run of bytes parsed in one call: a few milliseconds whatever it holds."""
WALK_FIELDS_PER_POINT = 4
"""Fields a large message's walk may step over, per allowed data point."""
MAX_DEPTH = 100
"""The parser's own nesting limit."""

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def decode_request(body: bytes, max_points: int) -> Steps[ExportMetricsServiceRequest]:
    """Parse a serialized ExportMetricsServiceRequest in slices (InvalidRequest if it
    is not one; TooManyDataPoints if its structure is over what `max_points` allows)."""
    request = ExportMetricsServiceRequest()
    walk = _Walk(WALK_FIELDS_PER_POINT * max_points if max_points else 0)
    yield from _parse(request, memoryview(body), walk, 0)
    return request


class _Walk:
    __slots__ = ("cap", "fields")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.fields = 0

    def step(self) -> None:
        self.fields += 1
        if self.cap and self.fields > self.cap:
            raise TooManyDataPoints(
                f"the request holds over {self.cap} fields in its large messages "
                f"({WALK_FIELDS_PER_POINT} per data point allowed by max_data_points_per_request"
                f"={self.cap // WALK_FIELDS_PER_POINT}); send smaller batches "
                "(max_export_batch_size in the OpenTelemetry SDK)"
            )


def _merge(message: Message, data: memoryview) -> None:
    if not data:
        return
    try:
        message.MergeFromString(data)  # type: ignore[arg-type]  # upb reads any buffer: no copy
    except DecodeError as exc:
        # upb says what is wrong (bad UTF-8, truncated, nested too deep) after
        # a prefix naming the message type.
        detail = str(exc).rpartition("': ")[2] or "not protobuf"
        raise InvalidRequest(
            f"the body is not a valid OTLP ExportMetricsServiceRequest protobuf: {detail}"
        ) from exc


def _corrupt(what: str) -> InvalidRequest:
    return InvalidRequest(
        f"the body is not a valid OTLP ExportMetricsServiceRequest protobuf: {what}"
    )


def _varint(data: memoryview, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while at < end and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    raise _corrupt("truncated or overlong varint")


def _parse(message: Message, data: memoryview, walk: _Walk, depth: int) -> Steps[None]:
    """Merge `data` into `message`, a slice at a time, leaving out unknown fields."""
    if len(data) <= SLICE_BYTES:
        message.SetInParent()  # an empty message field is set all the same
        _merge(message, data)
        message.DiscardUnknownFields()  # its cost is bounded by the slice
        return
    if depth >= MAX_DEPTH:
        raise _corrupt("nested too deep")
    fields = message.DESCRIPTOR.fields_by_number
    at = pending = 0  # `pending`: where the run of scalar fields not yet merged starts
    end = len(data)
    while at < end:
        start = at
        tag, at = _varint(data, at, end)
        if tag >> 3 == 0:
            raise _corrupt("field number 0")  # as protobuf's own parser refuses it
        wire = tag & 7
        if wire == _VARINT:
            _, at = _varint(data, at, end)
        elif wire == _FIXED64:
            at += 8
        elif wire == _FIXED32:
            at += 4
        elif wire == _LENGTH:
            length, at = _varint(data, at, end)
            at += length
        else:
            raise _corrupt("groups are not OTLP")  # deprecated wire types 3 and 4
        if at > end:
            raise _corrupt("truncated")
        walk.step()
        field = fields.get(tag >> 3)
        if (
            field is not None
            and field.type != FieldDescriptor.TYPE_MESSAGE
            and (
                wire == _WIRE_TYPES.get(field.type, _VARINT)
                or (wire == _LENGTH and field.is_repeated)
            )
        ):
            if at - pending >= SLICE_BYTES:
                _merge(message, data[pending:at])
                pending = at
                yield
            elif walk.fields & 0xFF == 0:
                yield  # a long run of small fields: the walk itself takes time
            continue  # a scalar: merged with its run
        # A message field, or one this gateway does not know (left out):
        # the run before it is merged first.
        _merge(message, data[pending:start])
        pending = at
        if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE and wire == _LENGTH:
            container = getattr(message, field.name)
            child = container.add() if field.is_repeated else container
            yield from _parse(child, data[at - length : at], walk, depth + 1)
        yield
    _merge(message, data[pending:end])


# How each scalar type is sent, if not varint; another wire type makes the field unknown.
_WIRE_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: _FIXED64,
    FieldDescriptor.TYPE_FIXED64: _FIXED64,
    FieldDescriptor.TYPE_SFIXED64: _FIXED64,
    FieldDescriptor.TYPE_FLOAT: _FIXED32,
    FieldDescriptor.TYPE_FIXED32: _FIXED32,
    FieldDescriptor.TYPE_SFIXED32: _FIXED32,
    FieldDescriptor.TYPE_STRING: _LENGTH,
    FieldDescriptor.TYPE_BYTES: _LENGTH,
}


async def decode_protobuf(decoding: Decoding, body: bytes) -> ExportMetricsServiceRequest:
    """A protobuf body (gRPC, OTLP/HTTP) as a request, parsed in the request's slices."""
    steps = decode_request(body, decoding.limits.max_data_points_per_request)
    if len(body) <= SLICE_BYTES:
        return decoding.work.run_small(steps)  # parsed in one call anyway
    return await decoding.work.run(steps)
