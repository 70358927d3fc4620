"""Streamed sha256 of image files (images are gigabytes; never read one whole)."""

import hashlib
import hmac
import re
from pathlib import Path

from .errors import ChecksumMismatch

CHUNK_BYTES = 1024 * 1024
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def normalize_sha256(value: str) -> str:
    """Lower-case hex digest; ValueError when `value` is not 64 hex digits."""
    normalized = value.strip().lower()
    if not SHA256_HEX.fullmatch(normalized):
        raise ValueError(f"not a sha256 hex digest: {value!r}")
    return normalized


def verify_sha256(path: Path, expected: str) -> str:
    """The file's sha256; ChecksumMismatch when it is not `expected`."""
    expected = normalize_sha256(expected)
    actual = sha256_file(path)
    if not hmac.compare_digest(actual, expected):
        raise ChecksumMismatch(expected, actual)
    return actual
