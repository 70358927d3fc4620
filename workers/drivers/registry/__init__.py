"""The team image registry: Debian's ``docker-registry`` (CNCF distribution),
run by Strata on loopback with token authentication issued by Strata.

This package renders the registry's configuration, keeps the key pair that
signs and verifies the tokens, and checks the registry's health.  No Django.
"""

from .client import MANIFEST_TYPES, ManifestInvalid, image_size
from .config import RegistryConfig, render_config, write_config
from .health import RegistryDown, check_health
from .signing import (
    SigningKey,
    load_or_create_notification_secret,
    load_or_create_signing_key,
)

__all__ = [
    "MANIFEST_TYPES",
    "ManifestInvalid",
    "image_size",
    "load_or_create_notification_secret",
    "RegistryConfig",
    "RegistryDown",
    "SigningKey",
    "check_health",
    "load_or_create_signing_key",
    "render_config",
    "write_config",
]
