"""Days left on the connector's certificate, read from its PEM file at collection time.

Where this sits: connector's certificate file ──(otel_agents: *certificate gauge*)──▶ OTLP.

Parsed with the standard library on purpose: `cryptography` is not a dependency of
otel_agents (grpcio does not pull it in; here it only arrives with Prefect), the stdlib
has no public certificate parser (`ssl._ssl._test_decode_cert` is private), and the
expiry date sits at a fixed place in every X.509 certificate (RFC 5280 §4.1), so a
dozen lines of DER reading are enough. Trust is never decided here: this only reads a
date for a gauge. The unit tests check it against `cryptography`.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

_logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0
# A certificate chain file is a few KiB; refuse to read anything absurdly large.
_MAX_FILE_BYTES = 1 << 20
_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL
)
_SEQUENCE, _INTEGER, _EXPLICIT_0 = 0x30, 0x02, 0xA0
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18


def read_regular_file(path: str, limit: int = _MAX_FILE_BYTES) -> bytes:
    """The content of the regular file at `path` (at most `limit` bytes); OSError otherwise.

    Opened without blocking and checked before reading: a FIFO given as a certificate
    would block `open` until someone writes to it, and a device could be read forever.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        data = file.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
    return data


class CertificateError(ValueError):
    """The file holds no readable X.509 certificate; the message says what is wrong."""


def not_after(data: bytes) -> float:
    """The expiry (notAfter, Unix seconds) of the first certificate in PEM or DER `data`.

    In a chain file the first certificate is the leaf, the one that expires the
    service. Raises `CertificateError` when there is none or it is malformed.
    """
    block = _PEM_BLOCK.search(data)
    if block is not None:
        try:
            der = base64.b64decode(block.group(1), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise CertificateError(f"its PEM block is not valid base64 ({exc})") from exc
    elif data[:1] == bytes([_SEQUENCE]):
        der = data
    else:
        raise CertificateError("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return _not_after_der(der)
    except (IndexError, ValueError) as exc:
        raise CertificateError(f"it is not a valid X.509 certificate ({exc})") from exc


def _not_after_der(der: bytes) -> float:
    # Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    #   serialNumber INTEGER, signature SEQUENCE, issuer SEQUENCE,
    #   validity SEQUENCE { notBefore Time, notAfter Time }, ... }, ... }
    _, certificate, _ = _element(der, 0, _SEQUENCE)
    _, tbs, _ = _element(der, certificate, _SEQUENCE)
    tag, _, end = _element(der, tbs, None)
    serial = end if tag == _EXPLICIT_0 else tbs
    _, _, end = _element(der, serial, _INTEGER)
    _, _, end = _element(der, end, _SEQUENCE)
    _, _, end = _element(der, end, _SEQUENCE)
    _, validity, _ = _element(der, end, _SEQUENCE)
    _, _, end = _element(der, validity, None)
    tag, start, end = _element(der, end, None)
    return _parse_time(tag, der[start:end].decode("ascii"))


def _element(der: bytes, pos: int, expected: int | None) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4:
            raise ValueError(f"unsupported length encoding at byte {pos}")
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    if pos + length > len(der):
        raise ValueError("truncated")
    if expected is not None and tag != expected:
        raise ValueError(f"expected tag {expected:#x} at byte {pos}, found {tag:#x}")
    return tag, pos, pos + length


def _parse_time(tag: int, text: str) -> float:
    if tag == _UTC_TIME and len(text) == 13:
        # RFC 5280: two-digit years 50-99 are 19xx, 00-49 are 20xx.
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError(f"notAfter has tag {tag:#x}, not UTCTime or GeneralizedTime")
    moment = datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    return moment.timestamp()


class CertificateFile:
    """A certificate file whose days left are re-read only when the file changes.

    `days_left()` never raises: a missing, unreadable or invalid file gives None and
    one warning, repeated only after the file was readable again in between.
    """

    def __init__(
        self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time
    ) -> None:
        """Watch `path`; `clock` gives the current Unix time (tests pass a fixed one)."""
        self.path = os.fspath(path)
        self._clock = clock
        self._lock = threading.Lock()  # two readers may collect at once
        # (mtime, size, inode) of the file last parsed, and what parsing gave.
        self._parsed: tuple[tuple[int, int, int], float | str] | None = None
        self._warned: str | None = None

    def days_left(self) -> float | None:
        """Days until the certificate expires (negative once expired), or None."""
        with self._lock:
            outcome = self._read()
            if isinstance(outcome, str):
                if outcome != self._warned:
                    self._warned = outcome
                    _logger.warning(
                        "otel_agents: certificate file %s: %s; its expiry is not reported "
                        "until the file holds a readable certificate",
                        self.path,
                        outcome,
                    )
                return None
            self._warned = None
            return (outcome - self._clock()) / SECONDS_PER_DAY

    def _read(self) -> float | str:
        """The expiry time, or what is wrong with the file."""
        try:
            stat = os.stat(self.path)
            key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if self._parsed is not None and self._parsed[0] == key:
                return self._parsed[1]
            data = read_regular_file(self.path)
        except OSError as exc:
            self._parsed = None
            return f"cannot read it ({exc.strerror or exc})"
        try:
            outcome: float | str = not_after(data)
        except CertificateError as exc:
            outcome = str(exc)
        except Exception as exc:  # never into the exporter's thread
            outcome = f"unexpected error while parsing it ({type(exc).__name__})"
        self._parsed = (key, outcome)
        return outcome
