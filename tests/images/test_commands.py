"""`manage.py import_image` and `manage.py build_image` against the real Image model."""

import io
import os

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError

from cloud.models import Image
from tests.images.test_debian_builder import RECIPE, publish_fake_cache_entry
from workers.drivers.images import sha256_file

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.STRATA_DATA_DIR = tmp_path / "data"
    return settings.STRATA_DATA_DIR


def images_left(data_dir):
    images = data_dir / "images"
    return sorted(os.listdir(images)) if images.exists() else []


def import_image(name, path, sha256, *extra):
    out = io.StringIO()
    call_command("import_image", name, str(path), "--sha256", sha256, *extra, stdout=out)
    return out.getvalue()


def test_clean_image_is_copied_and_registered(data_dir, clean_qcow2):
    digest = sha256_file(clean_qcow2)
    output = import_image("tiny", clean_qcow2, digest, "--format", "qcow2", "--os", "alpine")
    image = Image.objects.get(name="tiny")
    assert image.path == str(data_dir / "images" / "tiny.qcow2")
    assert sha256_file(image.path) == digest == image.sha256
    assert (image.format, image.source, image.os) == ("qcow2", "imported", "alpine")
    assert image.virtual_size_bytes == 1024**2
    assert image.size_bytes == clean_qcow2.stat().st_size
    assert (image.kernel_path, image.initrd_path) == ("", "")
    assert "image tiny: imported qcow2" in output


def test_raw_image_is_registered_as_raw(data_dir, clean_raw):
    import_image("tiny-raw", clean_raw, sha256_file(clean_raw))
    assert Image.objects.get(name="tiny-raw").format == "raw"


def test_checksum_mismatch_is_refused_and_nothing_registered(data_dir, clean_qcow2):
    with pytest.raises(CommandError, match="refused .*sha256 mismatch"):
        import_image("tiny", clean_qcow2, "0" * 64)
    assert not Image.objects.exists()
    assert images_left(data_dir) == []


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("backing_qcow2", "has a backing file"),
        ("data_file_qcow2", "has an external data-file"),
        ("json_backing_qcow2", "json: pseudo-protocol"),
    ],
)
def test_hostile_image_is_refused_and_nothing_registered(request, data_dir, image, reason):
    hostile = request.getfixturevalue(image)
    with pytest.raises(CommandError, match=f"refused .*{reason}"):
        import_image("hostile", hostile, sha256_file(hostile))
    assert not Image.objects.exists()
    assert images_left(data_dir) == []


def test_huge_image_is_refused_by_the_configurable_limit(data_dir, clean_qcow2):
    with pytest.raises(CommandError, match="exceeds the limit"):
        import_image("tiny", clean_qcow2, sha256_file(clean_qcow2), "--max-virtual-size-gib", "0")
    assert not Image.objects.exists()


def test_malformed_digest_and_name_are_refused(data_dir, clean_qcow2):
    with pytest.raises(CommandError, match="not a sha256 hex digest"):
        import_image("tiny", clean_qcow2, "abc")
    with pytest.raises(CommandError, match="^name: "):
        import_image("../etc", clean_qcow2, sha256_file(clean_qcow2))
    assert not Image.objects.exists()
    assert images_left(data_dir) == []


def test_taken_name_is_refused(data_dir, clean_qcow2):
    digest = sha256_file(clean_qcow2)
    import_image("tiny", clean_qcow2, digest)
    with pytest.raises(CommandError, match="already exists"):
        import_image("tiny", clean_qcow2, digest)
    assert Image.objects.count() == 1
    assert images_left(data_dir) == ["tiny.qcow2"]


def test_copy_is_removed_when_registering_fails(data_dir, clean_qcow2, monkeypatch):
    def lose_the_race(**fields):
        # Fault injection: another import took the name after our check.
        raise IntegrityError("UNIQUE constraint failed: cloud_image.name")

    monkeypatch.setattr(Image.objects, "create", lose_the_race)
    with pytest.raises(CommandError, match="already exists"):
        import_image("tiny", clean_qcow2, sha256_file(clean_qcow2))
    assert images_left(data_dir) == []


def build_image(*args):
    out = io.StringIO()
    call_command("build_image", *args, stdout=out)
    return out.getvalue()


def test_build_registers_then_updates_the_cached_image(data_dir, clean_qcow2):
    directory = publish_fake_cache_entry(data_dir, clean_qcow2)
    output = build_image("debian-12")
    image = Image.objects.get(name="debian-12")
    assert image.path == str(directory / "disk.qcow2")
    assert image.kernel_path == str(directory / "vmlinuz")
    assert image.initrd_path == str(directory / "initrd.img")
    assert image.kernel_cmdline == RECIPE.kernel_cmdline
    assert (image.source, image.os, image.format) == ("built", "debian-12", "qcow2")
    assert "[100%] cached image" in output
    assert "image debian-12: registered (cached build)" in output

    Image.objects.filter(pk=image.pk).update(sha256="cd" * 32)
    assert "image debian-12: updated" in build_image("debian-12")
    assert Image.objects.get(pk=image.pk).sha256 == "ab" * 32


def test_build_does_not_replace_an_imported_image(data_dir, clean_qcow2):
    import_image("debian-12", clean_qcow2, sha256_file(clean_qcow2))
    with pytest.raises(CommandError, match="was imported"):
        build_image("debian-12")
    assert Image.objects.get(name="debian-12").source == "imported"


def test_failed_build_registers_nothing(data_dir):
    with pytest.raises(CommandError, match="building debian-12 failed: debootstrap failed"):
        build_image("debian-12", "--mirror", "http://127.0.0.1:9/debian")
    assert not Image.objects.exists()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_build_progress_rewrites_one_line_on_a_terminal(data_dir, clean_qcow2):
    publish_fake_cache_entry(data_dir, clean_qcow2)
    terminal = Terminal()
    call_command("build_image", "debian-12", stdout=terminal)
    progress_line, summary = terminal.getvalue().split("\n")[:2]
    assert progress_line.startswith("\r\x1b[K[100%] cached image")
    assert summary.startswith("image debian-12: registered")
