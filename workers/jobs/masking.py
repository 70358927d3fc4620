"""Hiding private keys and secret values in what jobs write: logs, errors,
and what the API shows of a container's output."""

import re

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S
)


def mask(text: str, secrets: set[str] | frozenset[str] = frozenset()) -> str:
    """Hide private keys and the given secret values in logs and errors.

    Every value is hidden, however short: secrets shorter than 4 characters are
    refused when set, so only values from before that rule can be that short.
    """
    text = _PRIVATE_KEY.sub("[private key hidden]", text)
    # Longest first, so a value containing another is hidden whole.
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "********")
    return text
