"""AgentConfig.from_env: every variable, its precedence, fallback and the warning naming it."""

from __future__ import annotations

import pytest

from otel_agents.config import DEFAULT_ENDPOINT, AgentConfig, ConfigError
from otel_agents.env import NO_LIMIT_MS


def config(**environ: str) -> AgentConfig:
    return AgentConfig.from_env(environ)


def config_error(**environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        AgentConfig.from_env(environ)
    return str(caught.value)


def warning_of(**environ: str) -> str:
    """The one warning the environment causes."""
    [warning] = config(**environ).warnings
    return warning


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    c = config()
    assert c.endpoint == DEFAULT_ENDPOINT == "http://localhost:4317"
    assert not c.use_tls
    assert c.grpc_metadata() == ()
    assert (c.compression, c.timeout_s, c.export_interval_ms) == ("gzip", 10.0, 30_000.0)
    assert (c.shutdown_timeout_s, c.service_name, c.resource_attributes) == (5.0, None, ())
    assert (c.protocol, c.export_timeout_ms, c.exemplar_filter) == ("grpc", 30_000.0, "trace_based")
    assert c.histogram_aggregation == "explicit_bucket_histogram"
    assert (c.certificate_file, c.client_certificate_file, c.client_key_file) == (None, None, None)
    assert c.exporter_enabled
    assert not c.sdk_disabled
    assert not c.task_detail
    assert c.warnings == ()


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_an_empty_value_counts_as_unset() -> None:
    c = config(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=" ", OTEL_EXPORTER_OTLP_ENDPOINT="http://gw:1")
    assert c.endpoint == "http://gw:1"


@pytest.mark.parametrize(
    ("endpoint", "insecure", "expected", "tls"),
    [
        ("http://gw:4317", "false", "http://gw:4317", False),
        ("http://gw:4317/", "false", "http://gw:4317", False),
        ("https://gw:4317", "true", "https://gw:4317", True),  # https wins over INSECURE
        ("gw:4317", "false", "https://gw:4317", True),  # bare host:port means TLS...
        ("gw:4317", "true", "http://gw:4317", False),  # ...unless INSECURE=true
        ("127.0.0.1:4317", "TRUE", "http://127.0.0.1:4317", False),
        ("HTTPS://[::1]:4317", "false", "https://[::1]:4317", True),
    ],
)
def test_endpoint_scheme_decides_tls(
    endpoint: str, insecure: str, expected: str, tls: bool
) -> None:
    c = config(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_INSECURE=insecure)
    assert (c.endpoint, c.use_tls) == (expected, tls)


def test_metrics_specific_variables_win_over_generic_ones() -> None:
    c = config(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://generic:1",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="metrics:2",
        OTEL_EXPORTER_OTLP_INSECURE="false",
        OTEL_EXPORTER_OTLP_METRICS_INSECURE="true",
        OTEL_EXPORTER_OTLP_HEADERS="a=1,b=2",
        OTEL_EXPORTER_OTLP_METRICS_HEADERS="c=3",
        OTEL_EXPORTER_OTLP_COMPRESSION="bogus",
        OTEL_EXPORTER_OTLP_METRICS_COMPRESSION="none",
        OTEL_EXPORTER_OTLP_TIMEOUT="1000",
        OTEL_EXPORTER_OTLP_METRICS_TIMEOUT="2500",
        OTEL_EXPORTER_OTLP_CERTIFICATE="/generic.pem",
        OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE="/metrics.pem",
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE="/generic.crt",
        OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE="/metrics.crt",
        OTEL_EXPORTER_OTLP_CLIENT_KEY="/generic.key",
        OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY="/metrics.key",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="grpc",
    )
    assert (c.protocol, c.endpoint) == ("grpc", "http://metrics:2")
    assert c.headers == (("c", "3"),)  # replaces, not merges (OTel spec)
    assert (c.compression, c.timeout_s, c.certificate_file) == ("none", 2.5, "/metrics.pem")
    assert (c.client_certificate_file, c.client_key_file) == ("/metrics.crt", "/metrics.key")
    # The generic compression was not used, so its bad value is not reported; the client
    # certificate over plaintext is.
    [warning] = c.warnings
    assert "CLIENT_CERTIFICATE" in warning
    assert "https://" in warning


@pytest.mark.parametrize("endpoint", ["grpc://gw:4317", "http://:4317", "http://gw:notaport"])
def test_an_endpoint_no_exporter_can_use_is_an_error_naming_the_variable(endpoint: str) -> None:
    message = config_error(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=endpoint)
    assert "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" in message
    assert "host:port" in message


@pytest.mark.parametrize(
    ("protocol", "variable", "endpoint", "expected"),
    [
        # OTLP/HTTP: the generic endpoint is a base URL and gets /v1/metrics appended...
        (
            "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://gw:4318",
            "http://gw:4318/v1/metrics",
        ),
        (
            "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://gw/otlp/",
            "https://gw/otlp/v1/metrics",
        ),
        # ...the signal-specific one is used as is.
        (
            "http/protobuf",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "https://gw/in/metrics",
            "https://gw/in/metrics",
        ),
        (
            "HTTP/PROTOBUF",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://gw:4318/v1/metrics",
            "http://gw:4318/v1/metrics",
        ),
        ("grpc", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://gw:4317/", "http://gw:4317"),
        ("grpc", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "gw:4317", "https://gw:4317"),
    ],
)
def test_each_protocol_follows_the_specifications_endpoint_rules(
    protocol: str, variable: str, endpoint: str, expected: str
) -> None:
    c = config(OTEL_EXPORTER_OTLP_PROTOCOL=protocol, **{variable: endpoint})
    assert (c.protocol, c.endpoint, c.endpoint_source) == (protocol.lower(), expected, variable)
    assert c.warnings == ()


def test_the_default_endpoint_follows_the_protocol() -> None:
    assert config(OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf").endpoint == (
        "http://localhost:4318/v1/metrics"
    )
    assert config(OTEL_EXPORTER_OTLP_PROTOCOL="grpc").endpoint == "http://localhost:4317"


@pytest.mark.parametrize(
    ("environ", "endpoint", "hints"),
    [
        # gRPC given an OTLP/HTTP URL: the path is dropped and the protocol suggested.
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://gw:4318/v1/metrics"},
            "http://gw:4318",
            ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"],
        ),
        # gRPC on the OTLP/HTTP port.
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://gw:4318"},
            "http://gw:4318",
            ["port 4318", "4317", "http/protobuf"],
        ),
        # OTLP/HTTP on the gRPC port.
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://gw:4317",
            },
            "http://gw:4317/v1/metrics",
            ["port 4317", "4318"],
        ),
        # A signal-specific OTLP/HTTP endpoint with no path is used as is: POSTs go to /.
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://gw:4318",
            },
            "http://gw:4318/",
            ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://gw:4318/v1/metrics"],
        ),
        # A base URL that already ends in /v1/metrics gets it twice, as the spec says.
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://gw:4318/v1/metrics",
            },
            "http://gw:4318/v1/metrics/v1/metrics",
            ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"],
        ),
        # An OTLP/HTTP URL needs a scheme: TLS is assumed.
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "gw:4318",
            },
            "https://gw:4318/v1/metrics",
            ["no scheme", "http://"],
        ),
    ],
)
def test_a_likely_endpoint_mistake_is_used_as_the_spec_says_with_one_hint(
    environ: dict[str, str], endpoint: str, hints: list[str]
) -> None:
    c = config(**environ)
    assert c.endpoint == endpoint
    [warning] = c.warnings
    for hint in hints:
        assert hint in warning


@pytest.mark.parametrize(
    ("value", "protocol", "hint"),
    [("http/json", "http/protobuf", "http/protobuf"), ("thrift", "grpc", "grpc, http/protobuf")],
)
def test_an_unsupported_protocol_falls_back_with_one_warning(
    value: str, protocol: str, hint: str
) -> None:
    c = config(OTEL_EXPORTER_OTLP_PROTOCOL=value)
    assert c.protocol == protocol
    [warning] = c.warnings
    assert warning.startswith("OTEL_EXPORTER_OTLP_PROTOCOL")
    assert hint in warning


def test_credentials_in_the_endpoint_are_refused_without_echoing_them() -> None:
    message = config_error(OTEL_EXPORTER_OTLP_ENDPOINT="http://user:s3cret@gw:4317")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in message
    assert "OTEL_AGENTS_API_KEY" in message
    assert "s3cret" not in message


def test_headers_are_url_decoded_and_keys_lower_cased() -> None:
    c = config(OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20abc, X-Team = data%2Cops ,")
    assert c.headers == (("authorization", "Bearer abc"), ("x-team", "data,ops"))
    assert c.grpc_metadata() == c.headers  # an explicit authorization header works alone


@pytest.mark.parametrize(
    ("headers", "hint"),
    [
        ("authorization", "key=value"),
        ("=secret", "key=value"),
        ("bad key=v", "valid header name"),
        ("trace-bin=v", "valid header name"),
        ("k=%0Asecret", "printable ASCII"),
    ],
)
def test_a_bad_header_is_skipped_the_others_sent_and_no_value_echoed(
    headers: str, hint: str
) -> None:
    c = config(OTEL_EXPORTER_OTLP_HEADERS=f"x-team=data,{headers}")
    assert c.headers == (("x-team", "data"),)
    [warning] = c.warnings
    assert warning.startswith("OTEL_EXPORTER_OTLP_HEADERS")
    assert hint in warning
    assert "secret" not in warning


def test_the_api_key_becomes_a_bearer_authorization_that_wins_over_headers() -> None:
    c = config(
        OTEL_AGENTS_API_KEY=" key-123 ",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20old,x-team=data",
    )
    assert c.grpc_metadata() == (("authorization", "Bearer key-123"), ("x-team", "data"))
    assert "key-123" not in repr(c)  # a logged config never leaks the key
    assert c.with_api_key("other").grpc_metadata()[0] == ("authorization", "Bearer other")


def test_an_unsendable_api_key_is_refused_without_echoing_it() -> None:
    message = config_error(OTEL_AGENTS_API_KEY="abc dé")
    assert message.startswith("OTEL_AGENTS_API_KEY")
    assert "abc" not in message
    with pytest.raises(ConfigError, match="api_key argument"):
        config().with_api_key("")


@pytest.mark.parametrize(
    ("variable", "value", "field", "fallback", "hint"),
    [
        ("OTEL_EXPORTER_OTLP_INSECURE", "yes", "insecure", False, "true or false"),
        ("OTEL_SDK_DISABLED", "1", "sdk_disabled", False, "true or false"),
        ("OTEL_AGENTS_TASK_DETAIL", "on", "task_detail", False, "true or false"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", "compression", "gzip", "gzip, none"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "abc", "timeout_s", 10.0, "milliseconds"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-5", "timeout_s", 10.0, "milliseconds"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "0", "export_interval_ms", 30_000.0, "milliseconds"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "nan", "export_interval_ms", 30_000.0, "milliseconds"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "1e400", "export_timeout_ms", 30_000.0, "milliseconds"),
        ("OTEL_AGENTS_SHUTDOWN_TIMEOUT", "-1", "shutdown_timeout_s", 5.0, "seconds"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team", "resource_attributes", (), "key=value"),
        ("OTEL_RESOURCE_ATTRIBUTES", "a=1,team", "resource_attributes", (), "whole variable"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
            "exponential",
            "histogram_aggregation",
            "explicit_bucket_histogram",
            "base2_exponential_bucket_histogram",
        ),
        (
            "OTEL_METRICS_EXEMPLAR_FILTER",
            "sometimes",
            "exemplar_filter",
            "trace_based",
            "always_on",
        ),
        ("OTEL_METRICS_EXPORTER", "console", "exporter_enabled", True, "none"),
        # Bytes that are not UTF-8, as os.environ gives them (lone surrogates).
        ("OTEL_SERVICE_NAME", "conn\udcff", "service_name", None, "UTF-8"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team=\udcfe", "resource_attributes", (), "UTF-8"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gz\udcff", "compression", "gzip", "UTF-8"),
    ],
)
def test_an_unusable_value_falls_back_with_one_warning_that_says_what_to_write(
    variable: str, value: str, field: str, fallback: object, hint: str
) -> None:
    c = config(**{variable: value})
    assert getattr(c, field) == fallback
    [warning] = c.warnings
    assert warning.startswith(variable)
    assert hint in warning


@pytest.mark.parametrize(
    ("variable", "field", "scale"),
    [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "timeout_s", 1.0),
        ("OTEL_METRIC_EXPORT_INTERVAL", "export_interval_ms", 1000.0),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "export_timeout_ms", 1000.0),
    ],
)
def test_a_value_surely_meant_as_seconds_is_read_as_seconds_with_a_warning(
    variable: str, field: str, scale: float
) -> None:
    c = config(**{variable: "5"})
    assert getattr(c, field) == 5 * scale
    [warning] = c.warnings
    assert warning.startswith(f"{variable}=5 is read as 5 seconds")
    assert "write 5000" in warning


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("TRUE", True), ("false", False)])
def test_task_detail_is_a_boolean(value: str, expected: bool) -> None:
    c = config(OTEL_AGENTS_TASK_DETAIL=value)
    assert (c.task_detail, c.warnings) == (expected, ())


def test_a_timeout_of_zero_means_no_limit() -> None:
    c = config(OTEL_EXPORTER_OTLP_TIMEOUT="0", OTEL_METRIC_EXPORT_TIMEOUT="0")
    assert (c.timeout_s * 1000, c.export_timeout_ms) == (NO_LIMIT_MS, NO_LIMIT_MS)
    assert c.warnings == ()


@pytest.mark.parametrize("value", ["delta", "LowMemory", "sideways"])
def test_temporality_stays_cumulative_and_a_request_for_another_says_so_once(value: str) -> None:
    warning = warning_of(OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=value)
    assert warning.startswith("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
    assert "cumulative" in warning
    assert config(OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="cumulative").warnings == ()


def test_the_metrics_enums_are_read_case_insensitively() -> None:
    c = config(
        OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION="BASE2_EXPONENTIAL_BUCKET_HISTOGRAM",
        OTEL_METRICS_EXEMPLAR_FILTER="Always_Off",
        OTEL_METRICS_EXPORTER="OTLP",
    )
    assert (c.histogram_aggregation, c.exemplar_filter, c.exporter_enabled) == (
        "base2_exponential_bucket_histogram",
        "always_off",
        True,
    )
    assert c.warnings == ()
    assert not config(OTEL_METRICS_EXPORTER="none").exporter_enabled


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
        ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
    ],
)
def test_half_a_client_certificate_is_named_in_one_warning(given: str, missing: str) -> None:
    warning = warning_of(OTEL_EXPORTER_OTLP_ENDPOINT="https://gw:4317", **{given: "/x.pem"})
    assert missing in warning
    assert "no client certificate is sent" in warning


def test_numbers_and_flags_are_parsed_in_their_documented_units() -> None:
    c = config(
        OTEL_EXPORTER_OTLP_TIMEOUT="2500",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
        OTEL_AGENTS_SHUTDOWN_TIMEOUT="2.5",
        OTEL_EXPORTER_OTLP_COMPRESSION="GZIP",
        OTEL_SDK_DISABLED="True",
    )
    assert (c.timeout_s, c.export_interval_ms, c.shutdown_timeout_s) == (2.5, 1000.0, 2.5)
    assert c.compression == "gzip"
    assert c.sdk_disabled


def test_service_name_and_resource_attributes_are_read_and_decoded() -> None:
    c = config(
        OTEL_SERVICE_NAME="orders-sync",
        OTEL_RESOURCE_ATTRIBUTES="Deployment.Environment=prod,team=data%20eng",
    )
    assert c.service_name == "orders-sync"
    # Resource keys keep their case: only header keys are lower-cased.
    assert c.resource_attributes == (("Deployment.Environment", "prod"), ("team", "data eng"))


def test_an_endpoint_argument_follows_the_same_rules() -> None:
    insecure = config(OTEL_EXPORTER_OTLP_INSECURE="true")
    assert insecure.with_endpoint("gw:4317").endpoint == "http://gw:4317"
    assert config().with_endpoint("gw:4317").endpoint == "https://gw:4317"
    with pytest.raises(ConfigError, match="endpoint argument"):
        config().with_endpoint("ftp://gw:21")
