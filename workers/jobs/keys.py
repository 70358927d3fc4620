"""The manager's own SSH key: the one key every guest authorises.

Kept encrypted at rest in the data directory (the same keys as every other
secret), generated on first use.
"""

from functools import cache

from django.conf import settings

from cloud.keyfiles import read_or_create
from cloud.models.crypto import decrypt, encrypt
from workers.drivers.hypervisor import SshKeyPair, generate_ed25519_keypair


def generate_encrypted_keypair() -> str:
    """A new manager key as stored: the private half encrypted, then the public line."""
    pair = generate_ed25519_keypair("strata-manager")
    return encrypt(pair.private_openssh) + "\n" + pair.public_openssh + "\n"


@cache
def manager_keypair() -> SshKeyPair:
    path = settings.STRATA_DATA_DIR / "ssh" / "manager_ed25519.enc"
    stored = read_or_create(path, generate_encrypted_keypair, dir_mode=0o700)
    token, public = stored.splitlines()[:2]
    return SshKeyPair(private_openssh=decrypt(token), public_openssh=public)
