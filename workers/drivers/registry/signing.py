"""The key pair that signs the registry's bearer tokens.

Strata signs with the private key (ES256); the registry trusts the
self-signed certificate as its ``rootcertbundle`` and finds the key by the
token's ``kid``, the libtrust fingerprint of the public key (distribution's
docs/spec/auth/jwt.md).  Both are made once, on first use, under a file lock
so two processes starting together make one pair; the private key is 0600.
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KEY_FILE = "token-signing.key"
CERT_FILE = "token-signing.crt"
NOTIFY_SECRET_FILE = "notification-secret"  # noqa: S105 - a file name, not a secret
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


def load_or_create_signing_key(directory: Path) -> SigningKey:
    """The pair kept in ``directory``, made there first if it is missing."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    with open(directory / ".token-signing.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (key_path.exists() and cert_path.exists()):
            _create(key_path, cert_path)
    private_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    return SigningKey(private_key, cert_path)


def _create(key_path: Path, cert_path: Path) -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
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
    pem_key = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key first and the certificate last: a pair is complete only when both exist.
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem_key)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def load_or_create_notification_secret(directory: Path) -> str:
    """The shared secret the registry sends with its event notifications (0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / NOTIFY_SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty: remove it to make a new secret")
    return secret
