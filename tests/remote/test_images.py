"""Shipping images: registry-less push with layer skipping, and pulls."""

import docker
import pytest

from workers.drivers.guest import (
    ImageShipFailed,
    RegistryAuth,
    SSHConnection,
    chain_ids,
    pull_image,
    push_image,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def second_target(sshd_second, manager_key, second_dockerd):
    """A connection whose engine is the (emptied) second dockerd."""
    connection = SSHConnection(
        sshd_second.endpoint(), manager_key.pkey, connect_timeout=5, command_timeout=120
    )
    _empty(second_dockerd.client)
    yield connection
    connection.close()
    _empty(second_dockerd.client)


def _empty(engine):
    for container in engine.containers.list(all=True):
        container.remove(force=True)
    for image in engine.images.list(all=True):
        engine.images.remove(image.id, force=True)


def test_chain_ids_follow_the_oci_definition():
    # Values from the OCI image spec's ChainID example are sha256 of "A B".
    import hashlib

    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    expected = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_ids([a, b]) == [a, expected]
    assert chain_ids([]) == []


def test_second_push_sends_only_the_new_layer(
    second_target, second_dockerd, local_engine, web_images
):
    v1, v2 = web_images
    engine = second_target.docker()
    assert engine.info()["DockerRootDir"].startswith(str(second_dockerd.root))

    first = push_image(local_engine, engine, v1)
    assert first.layers_skipped == 0 and first.bytes_sent > 1_000_000
    second = push_image(local_engine, engine, v2)
    print(
        f"first push {first.bytes_sent} bytes, second push {second.bytes_sent} bytes "
        f"({second.layers_skipped}/{second.layers_total} layers skipped)"
    )
    assert second.layers_skipped == 1 and second.layers_total == 2
    assert second.bytes_sent < 0.10 * first.bytes_sent

    # The skipped base layer really is the remote's own: the image works.
    assert engine.images.get(v2).id == local_engine.images.get(v2).id
    output = engine.containers.run(v2, ["cat", "/www/index.html"], network_mode="none", remove=True)
    assert output == b"release two\n"


def test_push_of_an_image_already_there_sends_nothing(second_target, local_engine, web_images):
    v1, _ = web_images
    engine = second_target.docker()
    assert push_image(local_engine, engine, v1).bytes_sent > 0
    again = push_image(local_engine, engine, v1)
    assert again.bytes_sent == 0 and again.layers_skipped == again.layers_total
    assert v1 in engine.images.get(v1).tags


def test_push_retags_an_image_held_under_another_name(second_target, local_engine, web_images):
    v1, _ = web_images
    engine = second_target.docker()
    push_image(local_engine, engine, v1)
    local_engine.images.get(v1).tag("strata-test/web", "alias")
    try:
        result = push_image(local_engine, engine, "strata-test/web:alias")
    finally:
        local_engine.images.remove("strata-test/web:alias")
    assert result.bytes_sent == 0
    assert "strata-test/web:alias" in engine.images.get(v1).tags


def test_push_of_a_missing_image_fails_clearly(second_target, local_engine):
    with pytest.raises(ImageShipFailed, match="not in the manager's engine"):
        push_image(local_engine, second_target.docker(), "strata-test/absent:1")


def test_pull_failure_is_typed_and_hides_the_password(second_target):
    auth = RegistryAuth("deployer", "s3cret-token", server="127.0.0.1:9")
    with pytest.raises(ImageShipFailed) as caught:
        pull_image(second_target.docker(), "127.0.0.1:9/team/app", "1", auth)
    assert "s3cret-token" not in str(caught.value)
    assert "s3cret-token" not in repr(auth)


def test_load_of_a_corrupt_stream_fails_typed(second_target, local_engine, web_images, monkeypatch):
    # Fault injection: a layer the target "has" vanishes between the check
    # and the load, so the empty placeholder is read and rejected.
    from workers.drivers.guest import images

    v1, v2 = web_images
    engine = second_target.docker()
    monkeypatch.setattr(
        images,
        "remote_chain_ids",
        lambda _engine: set(chain_ids(local_engine.images.get(v1).attrs["RootFS"]["Layers"])),
    )
    with pytest.raises(ImageShipFailed):
        push_image(local_engine, engine, v2)
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(v2)
