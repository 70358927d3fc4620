"""Encryption at rest for secrets (private keys, registry passwords, env secrets).

The key lives in ``STRATA_ENCRYPTION_KEYS`` (comma separated Fernet keys, the
first encrypts, all decrypt, so keys can be rotated) or, on a one-machine
trial, in a file in the data directory created on first use with mode 0600.
"""

import os
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


@cache
def _fernet() -> MultiFernet:
    keys = os.environ.get("STRATA_ENCRYPTION_KEYS", "")
    if not keys:
        key_file = settings.STRATA_DATA_DIR / "encryption_key"
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        keys = key_file.read_text().strip()
    return MultiFernet([Fernet(k.strip()) for k in keys.split(",") if k.strip()])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("secret cannot be decrypted with the configured keys") from exc


class EncryptedTextField(models.TextField):
    """A text column stored encrypted; Python code sees the plaintext."""

    def from_db_value(self, value, expression, connection):
        return None if value in (None, "") else decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return value if value in (None, "") else encrypt(value)
