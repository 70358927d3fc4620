"""The registries the manager reaches: Strata's own (the key that signs its
tokens, the tokens Strata issues to itself) and the external ones a team
registered (asked with the team's login), and the references that name them.

Below the services, because both the deploy service (resolving a tag once,
when the release is made) and the deploy job (pulling by digest into the
manager's engine) ask the registry: Strata's with a token for one
repository, an external one with the team's login.
"""

import functools
from dataclasses import dataclass

import docker
from django.conf import settings

from cloud.keyfiles import read_or_create
from cloud.models import ExternalRegistry
from workers.drivers.guest import pull_by_digest
from workers.drivers.guest.references import ImageReference
from workers.drivers.registry import (
    RegistryLogin,
    SigningKey,
    fetch_manifest,
    fetch_manifest_with_login,
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


@dataclass(frozen=True)
class RegistrySource:
    """One repository of a registry the manager pulls from, and how it logs in."""

    addr: str
    repository: str
    login: RegistryLogin | None  # None: Strata's own registry, with a token Strata signs

    @property
    def name(self) -> str:
        return "the team's registry" if self.login is None else f"the registry at {self.addr}"

    def resolve_digest(self, tag_or_digest: str) -> str:
        """The manifest digest at a tag (resolved) or a digest (checked).

        RegistryDown (transient), ImageNotInRegistry, ManifestInvalid, LoginRefused."""
        if self.login is None:
            token = manager_token(self.repository)
            digest, _ = fetch_manifest(self.addr, self.repository, tag_or_digest, token)
        else:
            digest, _ = fetch_manifest_with_login(
                self.addr, self.repository, tag_or_digest, self.login
            )
        return digest

    def auth_config(self) -> dict:
        if self.login is None:
            return {"registrytoken": manager_token(self.repository)}
        return {
            "username": self.login.username,
            "password": self.login.password,
            "serveraddress": self.addr,
        }


def registry_source(reference: ImageReference, team_id) -> RegistrySource | None:
    """Where ``reference`` is pulled from: Strata's registry, or one the team
    registered; None for an image of the manager's engine."""
    repository = registry_repository(reference)
    if repository is not None:
        return RegistrySource(settings.STRATA_REGISTRY_ADDR, repository, None)
    if not reference.host:
        return None
    found = ExternalRegistry.objects.filter(team=team_id, host=reference.host.lower()).first()
    if found is None:
        return None
    return RegistrySource(found.host, reference.path, RegistryLogin(found.username, found.password))


def manager_image_id(engine: docker.DockerClient, source: RegistrySource, digest: str) -> str:
    """The image ID of ``repository@digest`` in the manager's ``engine``, pulled
    from its registry when the engine lacks it (the registry is asked first,
    so a registry that is down is RegistryDown, worth a retry)."""
    reference = f"{source.addr}/{source.repository}"
    try:
        return engine.api.inspect_image(f"{reference}@{digest}")["Id"]
    except docker.errors.ImageNotFound:
        pass
    source.resolve_digest(digest)
    return pull_by_digest(engine, reference, digest, source.auth_config())
