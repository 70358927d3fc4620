"""The builder's caching, recipe hashing and interruption handling, without a
full debootstrap (test_debian_build_e2e.py does the real build)."""

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from workers.drivers.images import (
    DebianRecipe,
    ImageBuildError,
    build_debian_image,
    load_cached_image,
)
from workers.drivers.images import debian as debian_builder
from workers.drivers.images.filesystem import mounts_under

RECIPE = DebianRecipe()
UNUSED_MIRROR = "http://mirror.invalid/debian"


def test_recipe_hash_is_stable_and_covers_every_input():
    changed = [
        replace(RECIPE, release="trixie"),
        replace(RECIPE, packages=(*RECIPE.packages, "vim")),
        replace(RECIPE, guest_files=(*RECIPE.guest_files, ("etc/motd", "hi\n"))),
        replace(RECIPE, enabled_units=()),
        replace(RECIPE, disk_size="4G"),
        replace(RECIPE, kernel_cmdline="root=/dev/vda ro"),
        replace(RECIPE, builder_version=RECIPE.builder_version + 1),
    ]
    assert DebianRecipe().recipe_hash() == RECIPE.recipe_hash()
    hashes = {recipe.recipe_hash() for recipe in [RECIPE, *changed]}
    assert len(hashes) == len(changed) + 1
    assert RECIPE.cache_dir_name() == f"debian-12-{RECIPE.recipe_hash()[:16]}"


def test_debootstrap_output_drives_a_monotonic_progress():
    seen = []
    parser = debian_builder.DebootstrapProgress(lambda percent, message: seen.append(percent))
    lines = ["I: Retrieving InRelease", "W: a warning is ignored", "not an info line"]
    lines += [f"I: Validating pkg{n} 1.0-{n}" for n in range(215)]
    lines += [f"I: Extracting pkg{n}..." for n in range(88)]
    lines += [f"I: Unpacking pkg{n}..." for n in range(200)]
    lines += [f"I: Configuring pkg{n}..." for n in range(200)]
    lines += ["I: Configuring libc-bin...", "I: Base system installed successfully."]
    for line in lines:
        parser.feed(line)
    assert len(seen) == len(lines) - 2
    assert seen == sorted(seen)
    assert seen[0] < 5 and seen[-1] == debian_builder.DebootstrapProgress.END_PERCENT


def interrupted_debootstrap(args, on_line):
    """Fault injection: debootstrap got part of the way, then the build is interrupted."""
    rootfs = Path(args[-2])
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/half-written").write_text("x")
    on_line("I: Retrieving InRelease")
    raise KeyboardInterrupt


def mount_tmpfs(target):
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "strata-test", str(target)], check=False)
    if result.returncode != 0:
        pytest.skip("mounting needs root")
    (target / "inside-the-mount").write_text("must survive only as long as the mount")


def leftovers(data_dir):
    """What a build left in the images dir besides its lock files."""
    return sorted(p.name for p in (data_dir / "images").iterdir() if not p.name.endswith(".lock"))


def test_interrupted_build_leaves_no_image(tmp_path, monkeypatch):
    monkeypatch.setattr(debian_builder, "run_debootstrap", interrupted_debootstrap)
    progress = []
    with pytest.raises(KeyboardInterrupt):
        build_debian_image(tmp_path, lambda *update: progress.append(update), mirror=UNUSED_MIRROR)
    assert leftovers(tmp_path) == []
    assert progress[0][0] == 0
    assert (tmp_path / "cache" / "debs").is_dir()  # the .deb cache is kept for the retry


def test_interrupted_build_unmounts_what_debootstrap_mounted(tmp_path, monkeypatch):
    def debootstrap_killed_with_mounts(args, on_line):
        mount_tmpfs(Path(args[-2]) / "dev")
        raise KeyboardInterrupt

    monkeypatch.setattr(debian_builder, "run_debootstrap", debootstrap_killed_with_mounts)
    with pytest.raises(KeyboardInterrupt):
        build_debian_image(tmp_path, mirror=UNUSED_MIRROR)
    assert mounts_under(tmp_path) == []
    assert leftovers(tmp_path) == []


def test_next_build_removes_what_a_killed_build_abandoned(tmp_path, monkeypatch):
    images = tmp_path / "images"
    abandoned = images / f".build-{RECIPE.cache_dir_name()}-killed"
    mount_tmpfs(abandoned / "rootfs" / "proc")
    other_recipe = images / ".build-other-image-0123456789abcdef-live"
    other_recipe.mkdir()
    monkeypatch.setattr(debian_builder, "run_debootstrap", interrupted_debootstrap)
    with pytest.raises(KeyboardInterrupt):
        build_debian_image(tmp_path, mirror=UNUSED_MIRROR)
    assert mounts_under(tmp_path) == []
    assert leftovers(tmp_path) == [other_recipe.name]


def publish_fake_cache_entry(data_dir, disk_source):
    """A complete cache entry as a finished build leaves it."""
    directory = data_dir / "images" / RECIPE.cache_dir_name()
    directory.mkdir(parents=True)
    shutil.copyfile(disk_source, directory / "disk.qcow2")
    (directory / "vmlinuz").write_bytes(b"kernel")
    (directory / "initrd.img").write_bytes(b"initrd")
    manifest = {
        "name": RECIPE.name,
        "os": RECIPE.os,
        "format": "qcow2",
        "kernel_cmdline": RECIPE.kernel_cmdline,
        "sha256": "ab" * 32,
        "virtual_size_bytes": 1024**2,
        "size_bytes": disk_source.stat().st_size,
        "recipe_hash": RECIPE.recipe_hash(),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def refuse_to_build(args, on_line):
    pytest.fail("a cached image must not be rebuilt")


def test_cached_image_is_returned_at_once(tmp_path, monkeypatch, clean_qcow2):
    directory = publish_fake_cache_entry(tmp_path, clean_qcow2)
    monkeypatch.setattr(debian_builder, "run_debootstrap", refuse_to_build)
    progress = []
    image = build_debian_image(tmp_path, lambda *update: progress.append(update))
    assert image.from_cache and image.disk_path == directory / "disk.qcow2"
    assert (image.kernel_path.name, image.initrd_path.name) == ("vmlinuz", "initrd.img")
    assert image.recipe_hash == RECIPE.recipe_hash() and image.sha256 == "ab" * 32
    assert progress == [(100, f"cached image {directory}")]


@pytest.mark.parametrize("damage", ["manifest.json", "initrd.img"])
def test_incomplete_directory_is_not_an_image_and_is_rebuilt(
    tmp_path, monkeypatch, clean_qcow2, damage
):
    directory = publish_fake_cache_entry(tmp_path, clean_qcow2)
    (directory / damage).unlink()
    assert load_cached_image(directory) is None
    monkeypatch.setattr(debian_builder, "run_debootstrap", interrupted_debootstrap)
    with pytest.raises(KeyboardInterrupt):
        build_debian_image(tmp_path, mirror=UNUSED_MIRROR)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("manifest", ["{truncated", '{"name": "debian-12"}'])
def test_unreadable_manifest_is_not_an_image(tmp_path, clean_qcow2, manifest):
    directory = publish_fake_cache_entry(tmp_path, clean_qcow2)
    (directory / "manifest.json").write_text(manifest)
    assert load_cached_image(directory) is None


def test_failing_debootstrap_is_reported_and_leaves_nothing(tmp_path):
    # The real debootstrap, pointed at a port where nothing listens.
    with pytest.raises(ImageBuildError, match="debootstrap failed") as caught:
        build_debian_image(tmp_path, mirror="http://127.0.0.1:9/debian")
    assert "127.0.0.1" in str(caught.value)
    assert leftovers(tmp_path) == []
