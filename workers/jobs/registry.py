"""Strata's own registry as the manager reaches it: the key that signs its
tokens, the tokens Strata issues to itself, and the references that name it.

Below the services, because both the deploy service (resolving a tag once,
when the release is made) and the deploy job (pulling by digest into the
manager's engine) ask the registry, each with a token for one repository.
"""

import functools

import docker
from django.conf import settings

from cloud.keyfiles import read_or_create
from workers.drivers.guest import pull_by_digest
from workers.drivers.guest.references import ImageReference
from workers.drivers.registry import (
    SigningKey,
    fetch_manifest,
    generate_private_key_pem,
    load_private_key,
    self_signed_certificate_pem,
    sign_token,
)

ISSUER = "strata"
# Kept in STRATA_REGISTRY_AUTH_DIR, each made once on first use (cloud.keyfiles).
KEY_FILE = "token-signing.key"
CERT_FILE = "token-signing.crt"


@functools.lru_cache(maxsize=4)
def _signing_key(directory) -> SigningKey:
    """The pair kept in ``directory``: the key first, then the certificate made
    from whichever key was kept, so a certificate always matches its key."""
    pem = read_or_create(directory / KEY_FILE, generate_private_key_pem, dir_mode=0o700)
    private_key = load_private_key(pem)
    cert_path = directory / CERT_FILE
    read_or_create(cert_path, lambda: self_signed_certificate_pem(private_key), dir_mode=0o700)
    return SigningKey(private_key, cert_path)


def signing_key() -> SigningKey:
    return _signing_key(settings.STRATA_REGISTRY_AUTH_DIR)


def signed_token(subject: str, access: list[dict]) -> dict:
    return sign_token(
        signing_key(),
        issuer=ISSUER,
        subject=subject,
        audience=settings.STRATA_REGISTRY_SERVICE,
        lifetime=settings.STRATA_REGISTRY_TOKEN_SECONDS,
        access=access,
    )


def manager_token(repository: str, actions: tuple[str, ...] = ("pull",)) -> str:
    """A short token for Strata itself, granting ``actions`` on ``repository`` only."""
    access = [{"type": "repository", "name": repository, "actions": list(actions)}]
    return signed_token(ISSUER, access)["token"]


def registry_repository(reference: ImageReference) -> str | None:
    """The repository of Strata's registry that ``reference`` names, or None
    for an image of the manager's engine or of another registry."""
    return reference.path if reference.host == settings.STRATA_REGISTRY_ADDR else None


def resolve_digest(repository: str, tag_or_digest: str) -> str:
    """The manifest digest of ``repository`` at a tag (resolved) or a digest (checked).

    RegistryDown (transient), ImageNotInRegistry, ManifestInvalid."""
    digest, _ = fetch_manifest(
        settings.STRATA_REGISTRY_ADDR, repository, tag_or_digest, manager_token(repository)
    )
    return digest


def manager_image_id(engine: docker.DockerClient, repository: str, digest: str) -> str:
    """The image ID of ``repository@digest`` in the manager's ``engine``, pulled
    from Strata's registry when the engine lacks it (the registry is asked
    first, so a registry that is down is RegistryDown, worth a retry)."""
    reference = f"{settings.STRATA_REGISTRY_ADDR}/{repository}"
    try:
        return engine.api.inspect_image(f"{reference}@{digest}")["Id"]
    except docker.errors.ImageNotFound:
        pass
    resolve_digest(repository, digest)
    return pull_by_digest(engine, reference, digest, manager_token(repository))
