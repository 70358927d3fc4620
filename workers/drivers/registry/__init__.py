"""The team image registry: Debian's ``docker-registry`` (CNCF distribution),
run by Strata on loopback with token authentication issued by Strata.

This package renders the registry's configuration, keeps the key pair that
signs and verifies the tokens, and checks the registry's health.  No Django.
"""

from .client import (
    MANIFEST_TYPES,
    ImageNotInRegistry,
    LoginRefused,
    ManifestInvalid,
    RegistryLogin,
    delete_manifest,
    fetch_manifest,
    fetch_manifest_with_login,
    image_size,
)
from .config import RegistryConfig, render_config, write_config
from .health import RegistryDown, check_health
from .signing import (
    SigningKey,
    generate_private_key_pem,
    load_private_key,
    self_signed_certificate_pem,
    sign_token,
)

__all__ = [
    "MANIFEST_TYPES",
    "ImageNotInRegistry",
    "LoginRefused",
    "ManifestInvalid",
    "RegistryLogin",
    "delete_manifest",
    "fetch_manifest",
    "fetch_manifest_with_login",
    "image_size",
    "RegistryConfig",
    "RegistryDown",
    "SigningKey",
    "check_health",
    "generate_private_key_pem",
    "load_private_key",
    "self_signed_certificate_pem",
    "sign_token",
    "render_config",
    "write_config",
]
