"""The manager's own SSH key: the one key every guest authorises.

Kept encrypted at rest in the data directory (the same keys as every other
secret), generated on first use.
"""

import os
from functools import cache

from django.conf import settings

from cloud.models.crypto import decrypt, encrypt
from workers.drivers.hypervisor import SshKeyPair, generate_ed25519_keypair


@cache
def manager_keypair() -> SshKeyPair:
    path = settings.STRATA_DATA_DIR / "ssh" / "manager_ed25519.enc"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pair = generate_ed25519_keypair("strata-manager")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(encrypt(pair.private_openssh) + "\n" + pair.public_openssh + "\n")
    token, public = path.read_text().splitlines()[:2]
    return SshKeyPair(private_openssh=decrypt(token), public_openssh=public)
