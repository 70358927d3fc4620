"""The key pair that signs the registry's bearer tokens.

Strata signs with the private key (ES256); the registry trusts the
self-signed certificate as its ``rootcertbundle`` and finds the key by the
token's ``kid``, the libtrust fingerprint of the public key (distribution's
docs/spec/auth/jwt.md).  This module makes them; the caller keeps them as
key files (cloud.keyfiles), made once on first use, the private key 0600.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_YEARS = 10


@dataclass(frozen=True)
class SigningKey:
    private_key: ec.EllipticCurvePrivateKey
    certificate_path: Path

    @property
    def key_id(self) -> str:
        return libtrust_key_id(self.private_key.public_key())


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the DER public key, truncated to 240 bits, base32 in 12 groups of 4."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def generate_private_key_pem() -> str:
    """A new ES256 (P-256) private key, PEM (PKCS#8, unencrypted: kept 0600)."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_private_key(pem: str) -> ec.EllipticCurvePrivateKey:
    private_key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the token signing key is not an EC private key")
    return private_key


def self_signed_certificate_pem(private_key: ec.EllipticCurvePrivateKey) -> str:
    """The certificate the registry trusts as its ``rootcertbundle``, PEM."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strata registry token signer")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * CERT_YEARS))
        .sign(private_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def sign_token(
    key: SigningKey, *, issuer: str, subject: str, audience: str, lifetime: int, access: list
) -> dict:
    """A registry bearer token granting ``access``, as the token endpoint answers it."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + datetime.timedelta(seconds=lifetime),
        "jti": secrets.token_urlsafe(16),
        "access": access,
    }
    encoded = jwt.encode(
        claims, key.private_key, algorithm="ES256", headers={"kid": key.key_id, "typ": "JWT"}
    )
    return {
        "token": encoded,
        "access_token": encoded,
        "expires_in": lifetime,
        "issued_at": now.isoformat().replace("+00:00", "Z"),
    }
