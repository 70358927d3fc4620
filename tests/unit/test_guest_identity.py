"""What re-identity sends into a restored guest is checked before it is sent:
values travel as positional parameters of a fixed script, never as its text."""

import pytest

from workers.drivers.guest import GuestIdentity, InvalidSpec
from workers.drivers.guest.identity import REIDENTIFY_SCRIPT
from workers.drivers.hypervisor import generate_ed25519_keypair

PAIR = generate_ed25519_keypair("strata-vm")


def identity(**overrides) -> GuestIdentity:
    values = dict(
        hostname="web-1",
        machine_id="0" * 32,
        host_key_private=PAIR.private_openssh,
        host_key_public=PAIR.public_openssh,
    )
    return GuestIdentity(**{**values, **overrides})


def test_a_vm_identity_passes():
    assert identity().validate().renew_engine_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hostname", "web;reboot"),
        ("hostname", "-web"),
        ("machine_id", "0" * 31),
        ("machine_id", "Z" * 32),
        ("host_key_public", PAIR.public_openssh + "\nssh-ed25519 AAAA other"),
        ("host_key_public", "ssh-rsa AAAA"),
        ("host_key_private", "not a key"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(field, value):
    with pytest.raises(InvalidSpec, match=field):
        identity(**{field: value}).validate()


def test_the_script_reads_values_only_from_its_parameters():
    assert "$1" in REIDENTIFY_SCRIPT and "{" not in REIDENTIFY_SCRIPT.replace("${", "")
