"""Encryption at rest for secrets (private keys, registry passwords, env secrets).

The key lives in the ``STRATA_ENCRYPTION_KEYS`` setting (comma separated Fernet keys, the
first encrypts, all decrypt, so keys can be rotated) or, on a one-machine
trial, in a file in the data directory created on first use with mode 0600.
"""

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models

from cloud.keyfiles import read_or_create


@cache
def _fernet() -> MultiFernet:
    keys = settings.STRATA_ENCRYPTION_KEYS or read_or_create(
        settings.STRATA_DATA_DIR / "encryption_key", lambda: Fernet.generate_key().decode()
    )
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
