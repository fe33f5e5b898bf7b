"""Certificate expiry: days left from real certificates, absent and warned once otherwise."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

import otel_agents.certificate as certificate_module
from otel_agents import AgentTelemetry, connector_metrics, setup_metrics
from otel_agents.certificate import CertificateError, CertificateFile, not_after
from stack.pki import self_signed

NOW = datetime(2031, 3, 14, 15, 9, 26, tzinfo=UTC)


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def telemetry() -> Iterator[tuple[AgentTelemetry, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    t = setup_metrics("cert-test", "connector", environ={}, reader=reader, set_global=False)
    yield t, reader
    t.shutdown()


def expiry_points(reader: InMemoryMetricReader) -> list[tuple[str, float]]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        (metric.unit or "", point.value)
        for scope in data.resource_metrics[0].scope_metrics
        for metric in scope.metrics
        if metric.name == "connector.certificate_expiry"
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)
    ]


@pytest.mark.parametrize(
    "expires",
    [
        NOW + timedelta(days=10),  # UTCTime
        datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),  # last UTCTime year
        datetime(2051, 6, 1, tzinfo=UTC),  # GeneralizedTime from 2050 on
        datetime(1999, 1, 1, tzinfo=UTC),  # a two-digit year of the 1900s
    ],
)
def test_not_after_matches_cryptography(expires: datetime) -> None:
    certificate, _ = self_signed(expires)
    assert not_after(pem(certificate)) == certificate.not_valid_after_utc.timestamp()
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert not_after(der) == expires.timestamp()


def test_a_chain_or_key_file_gives_the_first_certificate(tmp_path: Path) -> None:
    leaf, key = self_signed(NOW + timedelta(days=3))
    ca, _ = self_signed(NOW + timedelta(days=900))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert not_after(key_pem + pem(leaf) + pem(ca)) == leaf.not_valid_after_utc.timestamp()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "no PEM certificate"),
        (b"hello", "no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid"),
        (b"\x30\x82\xff\xff\x30", "not a valid"),
    ],
)
def test_not_after_refuses_what_is_not_a_certificate(content: bytes, says: str) -> None:
    with pytest.raises(CertificateError, match=says):
        not_after(content)


def test_days_left_for_a_certificate_valid_ten_more_days(tmp_path: Path) -> None:
    certificate, _ = self_signed(NOW + timedelta(days=10))
    path = tmp_path / "connector.pem"
    path.write_bytes(pem(certificate))
    watched = CertificateFile(path, clock=NOW.timestamp)
    assert watched.days_left() == 10.0


def test_the_gauge_is_in_days_with_unit_d(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader], tmp_path: Path
) -> None:
    t, reader = telemetry
    certificate, _ = self_signed(datetime.now(UTC) + timedelta(days=10))
    path = tmp_path / "connector.pem"
    path.write_bytes(pem(certificate))
    connector_metrics(t, certificate_path=path)
    [(unit, days)] = expiry_points(reader)
    assert unit == "d"
    assert days == pytest.approx(10, abs=0.01)


def test_a_missing_file_means_no_gauge_and_one_warning(
    telemetry: tuple[AgentTelemetry, InMemoryMetricReader],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    t, reader = telemetry
    path = tmp_path / "missing.pem"
    connector_metrics(t, certificate_path=path)
    for _ in range(3):
        assert expiry_points(reader) == []
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert str(path) in warning.getMessage()
    assert "cannot read it" in warning.getMessage()


def test_recovery_and_a_new_problem_are_each_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "connector.pem"
    path.write_bytes(b"garbage")
    watched = CertificateFile(path, clock=NOW.timestamp)
    assert [watched.days_left(), watched.days_left()] == [None, None]
    certificate, _ = self_signed(NOW + timedelta(days=2))
    path.write_bytes(pem(certificate))
    os.utime(path, ns=(1, 1))  # a different mtime, even on coarse-grained filesystems
    assert watched.days_left() == 2.0
    path.unlink()
    assert [watched.days_left(), watched.days_left()] == [None, None]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "no PEM certificate" in messages[0]
    assert "cannot read it" in messages[1]


def test_the_file_is_parsed_again_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses: list[bytes] = []
    real_not_after = certificate_module.not_after

    def counting_not_after(data: bytes) -> float:
        parses.append(data)
        return real_not_after(data)

    monkeypatch.setattr(certificate_module, "not_after", counting_not_after)
    path = tmp_path / "connector.pem"
    old, _ = self_signed(NOW + timedelta(days=1))
    path.write_bytes(pem(old))
    watched = CertificateFile(path, clock=NOW.timestamp)
    assert [watched.days_left() for _ in range(3)] == [1.0, 1.0, 1.0]
    assert len(parses) == 1

    rotated, _ = self_signed(NOW + timedelta(days=90))
    path.write_bytes(pem(rotated))
    os.utime(path, ns=(2, 2))
    assert watched.days_left() == 90.0
    assert len(parses) == 2
