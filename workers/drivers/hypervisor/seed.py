"""cloud-init NoCloud seed ISO and the SSH keys that go into it.

The manager generates the guest's SSH host key and hands it to cloud-init, so
the client knows the key before first boot and rejects any other.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pycdlib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .errors import InvalidSpec
from .validation import STRATA_ID_PATTERN, require_domain_name, require_match

SEED_VOLUME_LABEL = "cidata"
# NoCloud reads exactly these names; network-config is optional.
SEED_FILES = ("meta-data", "user-data", "network-config")
SSH_PUBLIC_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")
MAX_AUTHORIZED_KEYS = 32


@dataclass(frozen=True)
class SshKeyPair:
    """An ed25519 key pair, both halves in OpenSSH format."""

    private_openssh: str
    public_openssh: str


def generate_ed25519_keypair(comment: str | None = None) -> SshKeyPair:
    """A fresh ed25519 key pair: a guest host key or the manager's client key."""
    private_key = ed25519.Ed25519PrivateKey.generate()
    private_text = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public_text = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    if comment:
        public_text = f"{public_text} {comment}"
    return SshKeyPair(private_openssh=private_text, public_openssh=public_text)


def _require_public_key(field_name: str, value: object) -> str:
    if not isinstance(value, str) or "\n" in value or "\r" in value or len(value) > 16384:
        raise InvalidSpec(field_name, "must be one line of OpenSSH public key")
    parts = value.split()
    if len(parts) < 2 or parts[0] not in SSH_PUBLIC_KEY_TYPES:
        raise InvalidSpec(field_name, f"must start with one of {SSH_PUBLIC_KEY_TYPES}")
    return value


@dataclass(frozen=True)
class SeedConfig:
    """What the guest learns at first boot."""

    instance_id: str
    hostname: str
    authorized_keys: tuple[str, ...]
    host_key: SshKeyPair
    # Ignored by images that disable cloud-init networking (the Strata image
    # configures networkd itself); other images get DHCP on every en* NIC.
    network_config: bool = True

    def validate(self) -> SeedConfig:
        require_match("instance_id", self.instance_id, STRATA_ID_PATTERN, "a Strata id")
        require_domain_name("hostname", self.hostname)
        if not isinstance(self.authorized_keys, tuple) or not (
            1 <= len(self.authorized_keys) <= MAX_AUTHORIZED_KEYS
        ):
            raise InvalidSpec("authorized_keys", f"must be 1-{MAX_AUTHORIZED_KEYS} keys")
        for index, key in enumerate(self.authorized_keys):
            _require_public_key(f"authorized_keys[{index}]", key)
        public = _require_public_key("host_key.public_openssh", self.host_key.public_openssh)
        if not public.startswith("ssh-ed25519 "):
            raise InvalidSpec("host_key.public_openssh", "must be an ed25519 key")
        if "-----BEGIN OPENSSH PRIVATE KEY-----" not in self.host_key.private_openssh:
            raise InvalidSpec("host_key.private_openssh", "must be an OpenSSH private key")
        return self


def _yaml_document(value: dict, header: str = "") -> bytes:
    # JSON is YAML: no YAML emitter, and key material cannot break the quoting.
    return (header + json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def meta_data(config: SeedConfig) -> bytes:
    return _yaml_document({"instance-id": config.instance_id, "local-hostname": config.hostname})


def user_data(config: SeedConfig) -> bytes:
    return _yaml_document(
        {
            # Debian's default would put a "login as debian" command in front of root's key.
            "disable_root": False,
            "ssh_pwauth": False,
            "ssh_authorized_keys": list(config.authorized_keys),
            # Replaces the image's host keys (and deletes any others): the
            # guest then presents exactly the key the manager pinned.
            "ssh_deletekeys": True,
            "ssh_keys": {
                "ed25519_private": config.host_key.private_openssh,
                "ed25519_public": config.host_key.public_openssh,
            },
            # The minimal image has no locales package; the locale module would fail.
            "locale": False,
        },
        header="#cloud-config\n",
    )


def network_config() -> bytes:
    return _yaml_document(
        {
            "version": 2,
            "ethernets": {"primary": {"match": {"name": "en*"}, "dhcp4": True}},
        }
    )


def build_seed_iso(config: SeedConfig) -> bytes:
    """The NoCloud seed as ISO 9660 bytes, with Joliet and Rock Ridge names."""
    config.validate()
    files = {"meta-data": meta_data(config), "user-data": user_data(config)}
    if config.network_config:
        files["network-config"] = network_config()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_VOLUME_LABEL)
    for index, (name, content) in enumerate(files.items()):
        # ISO 9660 level-3 names allow no hyphen; Linux reads the Rock Ridge name.
        iso.add_fp(
            io.BytesIO(content),
            len(content),
            f"/FILE{index}.;1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    output = io.BytesIO()
    iso.write_fp(output)
    iso.close()
    return output.getvalue()
