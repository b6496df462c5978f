"""Forged inputs for identity tests: certificate requests a real gateway never makes."""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def off_curve_csr() -> bytes:
    """A PEM CSR whose EC public key is not a point on P-256 (the point's last byte changed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(point) == 1
    bad = der.replace(point, point[:-1] + bytes([point[-1] ^ 1]))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bad) + b"-----END CERTIFICATE REQUEST-----\n"
