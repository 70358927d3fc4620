import subprocess

import pytest

from workers.drivers.images import ImageBuildError, filesystem
from workers.drivers.images.filesystem import mounts_under, remove_tree


@pytest.fixture
def tree_with_mount(tmp_path):
    """A tree holding a tmpfs mount at a path with a space (escaped in mountinfo)."""
    tree = tmp_path / "build tree"
    mount_point = tree / "rootfs" / "dev"
    mount_point.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "strata-test", str(mount_point)]).returncode:
        pytest.skip("mounting needs root")
    (mount_point / "device").write_text("x")
    yield tree, mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], capture_output=True)


def test_mounts_inside_a_tree_are_found(tree_with_mount):
    tree, mount_point = tree_with_mount
    assert mounts_under(tree) == [mount_point]
    assert mounts_under(tree.parent / "elsewhere") == []


def test_tree_is_unmounted_then_removed(tree_with_mount):
    tree, _ = tree_with_mount
    remove_tree(tree)
    assert not tree.exists()
    assert mounts_under(tree) == []


def test_tree_is_kept_when_a_mount_cannot_be_undone(tree_with_mount, monkeypatch):
    tree, mount_point = tree_with_mount

    # Fault injection: a mount that refuses to go away.
    monkeypatch.setattr(filesystem, "unmount", lambda mount_point: None)
    with pytest.raises(ImageBuildError, match="still mounted"):
        remove_tree(tree)
    assert (mount_point / "device").read_text() == "x"


def test_missing_tree_is_nothing_to_do(tmp_path):
    remove_tree(tmp_path / "absent")
