"""The remote tests clean up only what they made on the host's shared engine."""

import contextlib
import json

import docker
import pytest

from bench.harness.guest_servers import build_web_images, busybox_rootfs_tar, remove_web_images
from workers.drivers.guest.containers import LABEL_ENVIRONMENT_ID, LABEL_SERVICE_ID

from .conftest import remove_test_containers


@pytest.fixture
def someone_elses(local_engine):
    """An untagged (dangling) image and a Strata container of another installation."""
    answer = local_engine.api.import_image_from_data(busybox_rootfs_tar())
    image_id = json.loads(answer.strip().splitlines()[-1])["status"]
    container = local_engine.containers.create(
        image_id, ["true"], labels={LABEL_SERVICE_ID: "7", LABEL_ENVIRONMENT_ID: "42"}
    )
    yield image_id, container.id
    with contextlib.suppress(docker.errors.NotFound):  # wrongly removed by the code under test
        container.remove(force=True)
    with contextlib.suppress(docker.errors.NotFound):
        local_engine.images.remove(image_id, force=True)


def test_test_cleanup_leaves_other_installations_alone(local_engine, someone_elses):
    """Finding 19: the helpers remove their own containers and images, never every
    Strata container nor every dangling image on the host."""
    image_id, container_id = someone_elses
    tags = build_web_images(local_engine)
    remove_web_images(local_engine, tags)
    remove_test_containers(local_engine)
    assert local_engine.containers.get(container_id).labels[LABEL_ENVIRONMENT_ID] == "42"
    assert local_engine.images.get(image_id).id == image_id
    for tag in tags:
        with pytest.raises(docker.errors.ImageNotFound):
            local_engine.images.get(tag)
