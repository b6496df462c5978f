"""Refused handshakes on the sync listener: the reason labels and the log's rate limit (time passed in)."""

from __future__ import annotations

import ssl

import pytest

from pulse.cloud.tls import RateLimitedLog, refusal_reason


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


def _verify_error(code: int) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    exc.verify_code = code
    return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_certificate"),
        (_verify_error(10), "certificate_expired"),
        (_verify_error(9), "certificate_not_yet_valid"),
        (_verify_error(20), "certificate_untrusted"),
        (_ssl_error("HTTP_REQUEST"), "not_tls"),
        (_ssl_error("UNSUPPORTED_PROTOCOL"), "protocol_version"),
        (_ssl_error("TLSV1_ALERT_PROTOCOL_VERSION"), "protocol_version"),
        (_ssl_error("SOMETHING_ELSE"), "tls_error"),
        (ConnectionAbortedError("SSL handshake is taking longer than 60 seconds"), "timeout"),
        (ConnectionResetError(), "closed"),
        (OSError("odd"), "other"),
    ],
)
def test_refusal_reason_is_a_short_bounded_label(exc: BaseException, reason: str) -> None:
    assert refusal_reason(exc) == reason


def test_refusals_are_logged_once_per_key_per_window() -> None:
    log = RateLimitedLog(every_s=60.0)
    assert log.due(("10.0.0.1", "no_certificate"), now=1000.0)
    assert not log.due(("10.0.0.1", "no_certificate"), now=1059.9)
    assert log.due(("10.0.0.1", "certificate_expired"), now=1059.9)  # another reason
    assert log.due(("10.0.0.2", "no_certificate"), now=1059.9)  # another peer
    assert log.due(("10.0.0.1", "no_certificate"), now=1060.0)


def test_the_log_keeps_a_bounded_number_of_keys() -> None:
    log = RateLimitedLog(every_s=60.0, max_keys=3)
    for i in range(10):
        assert log.due(i, now=0.0)
    assert log.due(0, now=1.0)  # forgotten, so logged again
    assert not log.due(9, now=1.0)
