"""AgentConfig.from_env: every variable, its precedence, and errors that name it."""

from __future__ import annotations

import pytest

from otel_agents.config import DEFAULT_ENDPOINT, AgentConfig, ConfigError


def config(**environ: str) -> AgentConfig:
    return AgentConfig.from_env(environ)


def config_error(**environ: str) -> str:
    with pytest.raises(ConfigError) as caught:
        AgentConfig.from_env(environ)
    return str(caught.value)


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    c = config()
    assert c.endpoint == DEFAULT_ENDPOINT == "http://localhost:4317"
    assert not c.use_tls
    assert c.grpc_metadata() == ()
    assert (c.compression, c.timeout_s, c.export_interval_ms) == ("gzip", 10.0, 30_000.0)
    assert (c.shutdown_timeout_s, c.service_name, c.resource_attributes) == (5.0, None, ())
    assert c.certificate_file is None
    assert not c.sdk_disabled


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
    )
    assert c.endpoint == "http://metrics:2"
    assert c.headers == (("c", "3"),)  # replaces, not merges (OTel spec)
    assert (c.compression, c.timeout_s, c.certificate_file) == ("none", 2.5, "/metrics.pem")


@pytest.mark.parametrize(
    "endpoint",
    ["grpc://gw:4317", "http://gw:4317/v1/metrics", "http://:4317", "http://gw:notaport"],
)
def test_a_bad_endpoint_names_the_variable_and_the_fix(endpoint: str) -> None:
    message = config_error(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=endpoint)
    assert "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" in message
    assert "host:port" in message


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
        ("bad key=v", "gRPC metadata key"),
        ("trace-bin=v", "gRPC metadata key"),
        ("k=%0Asecret", "printable ASCII"),
    ],
)
def test_bad_headers_name_the_variable_and_never_echo_values(headers: str, hint: str) -> None:
    message = config_error(OTEL_EXPORTER_OTLP_HEADERS=headers)
    assert message.startswith("OTEL_EXPORTER_OTLP_HEADERS")
    assert hint in message
    assert "secret" not in message


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
    ("variable", "value", "hint"),
    [
        ("OTEL_EXPORTER_OTLP_INSECURE", "yes", "true or false"),
        ("OTEL_SDK_DISABLED", "1", "true or false"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", "gzip or none"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "10", "milliseconds"),  # seconds by mistake
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "abc", "milliseconds"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "0", "milliseconds"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "nan", "milliseconds"),
        ("OTEL_AGENTS_SHUTDOWN_TIMEOUT", "-1", "seconds"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team", "key=value"),
    ],
)
def test_an_invalid_value_names_the_variable_and_what_to_change(
    variable: str, value: str, hint: str
) -> None:
    message = config_error(**{variable: value})
    assert message.startswith(variable)
    assert hint in message


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
