"""The NoCloud seed ISO, read back with pycdlib, and the generated SSH keys."""

from __future__ import annotations

import io

import paramiko
import pycdlib
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from workers.drivers.hypervisor import (
    InvalidSpec,
    SeedConfig,
    build_seed_iso,
    generate_ed25519_keypair,
)

HOST_KEY = generate_ed25519_keypair()
CLIENT_KEY = generate_ed25519_keypair("strata-manager")


def make_config(**overrides) -> SeedConfig:
    values = dict(
        instance_id="0b6f9c1e-52a4-4c7e-9d0e-2f1c3a4b5c6d",
        hostname="web-1",
        authorized_keys=(CLIENT_KEY.public_openssh,),
        host_key=HOST_KEY,
    )
    values.update(overrides)
    return SeedConfig(**values)


def read_iso(data: bytes) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_file():
                name = child.rock_ridge.name().decode()
                output = io.BytesIO()
                iso.get_file_from_iso_fp(output, rr_path=f"/{name}")
                files[name] = output.getvalue()
        return label, files
    finally:
        iso.close()


def test_label_and_files():
    label, files = read_iso(build_seed_iso(make_config()))
    assert label == "cidata"
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    _, without_network = read_iso(build_seed_iso(make_config(network_config=False)))
    assert sorted(without_network) == ["meta-data", "user-data"]


def test_meta_data():
    _, files = read_iso(build_seed_iso(make_config()))
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "0b6f9c1e-52a4-4c7e-9d0e-2f1c3a4b5c6d",
        "local-hostname": "web-1",
    }


def test_user_data_is_cloud_config():
    _, files = read_iso(build_seed_iso(make_config()))
    assert files["user-data"].startswith(b"#cloud-config\n")
    user_data = yaml.safe_load(files["user-data"])
    assert user_data["disable_root"] is False
    assert user_data["ssh_pwauth"] is False
    assert user_data["locale"] is False
    assert user_data["ssh_authorized_keys"] == [CLIENT_KEY.public_openssh]
    assert user_data["ssh_keys"] == {
        "ed25519_private": HOST_KEY.private_openssh,
        "ed25519_public": HOST_KEY.public_openssh,
    }


def test_network_config_dhcps_on_en_nics():
    _, files = read_iso(build_seed_iso(make_config()))
    assert yaml.safe_load(files["network-config"]) == {
        "version": 2,
        "ethernets": {"primary": {"match": {"name": "en*"}, "dhcp4": True}},
    }


def test_generated_keypair_is_openssh_ed25519():
    pair = generate_ed25519_keypair("a-comment")
    private = serialization.load_ssh_private_key(pair.private_openssh.encode(), password=None)
    public_line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert pair.public_openssh == f"{public_line.decode()} a-comment"
    assert pair.public_openssh.startswith("ssh-ed25519 ")
    # paramiko (the SSH client) reads it too.
    assert paramiko.Ed25519Key.from_private_key(io.StringIO(pair.private_openssh))
    assert generate_ed25519_keypair() != generate_ed25519_keypair()


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"instance_id": "a\nb"}, "instance_id"),
        ({"hostname": "web_1"}, "hostname"),
        ({"hostname": "a'><x"}, "hostname"),
        ({"authorized_keys": ()}, "authorized_keys"),
        ({"authorized_keys": ["ssh-ed25519 AAAA"]}, "authorized_keys"),
        ({"authorized_keys": ("ssh-ed25519 AAAA\nssh-rsa BBBB",)}, "authorized_keys[0]"),
        ({"authorized_keys": ("not-a-key",)}, "authorized_keys[0]"),
    ],
)
def test_bad_seed_values_are_rejected(overrides, field):
    with pytest.raises(InvalidSpec) as error:
        build_seed_iso(make_config(**overrides))
    assert error.value.field == field


def test_key_material_cannot_inject_cloud_config():
    # A comment full of YAML syntax stays inside its string.
    key = CLIENT_KEY.public_openssh + ' x"}: {runcmd: [reboot]} #'
    _, files = read_iso(build_seed_iso(make_config(authorized_keys=(key,))))
    user_data = yaml.safe_load(files["user-data"])
    assert user_data["ssh_authorized_keys"] == [key]
    assert "runcmd" not in user_data
