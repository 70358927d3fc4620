import os

import pytest

from workers.drivers.images import (
    ChecksumMismatch,
    ImageError,
    ImageRejected,
    import_image_file,
    sha256_file,
)
from workers.drivers.images.importer import validate_image_name


@pytest.fixture
def images_dir(tmp_path):
    return tmp_path / "images"


def test_clean_qcow2_is_copied_and_described(clean_qcow2, images_dir):
    imported = import_image_file(clean_qcow2, images_dir, "tiny", sha256_file(clean_qcow2))
    assert imported.path == images_dir / "tiny.qcow2"
    assert imported.path.read_bytes() == clean_qcow2.read_bytes()
    assert (imported.format, imported.virtual_size_bytes) == ("qcow2", 1024**2)
    assert imported.sha256 == sha256_file(clean_qcow2)
    assert os.listdir(images_dir) == ["tiny.qcow2"]


def test_raw_image_stays_sparse(tmp_path, images_dir):
    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as handle:
        handle.write(b"\x55" * 512)
        handle.truncate(64 * 1024**2)
    imported = import_image_file(
        sparse, images_dir, "sparse", sha256_file(sparse), expected_format="raw"
    )
    assert imported.path.stat().st_size == 64 * 1024**2
    assert imported.path.stat().st_blocks * 512 < 4 * 1024**2
    assert sha256_file(imported.path) == sha256_file(sparse)


def test_checksum_mismatch_leaves_nothing(clean_qcow2, images_dir):
    with pytest.raises(ChecksumMismatch):
        import_image_file(clean_qcow2, images_dir, "tiny", "0" * 64)
    assert os.listdir(images_dir) == []


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("backing_qcow2", "backing file"),
        ("data_file_qcow2", "external data-file"),
        ("json_backing_qcow2", "json:"),
    ],
)
def test_hostile_image_leaves_nothing(request, images_dir, image, reason):
    hostile = request.getfixturevalue(image)
    with pytest.raises(ImageRejected, match=reason):
        import_image_file(hostile, images_dir, "hostile", sha256_file(hostile))
    assert os.listdir(images_dir) == []


def test_symlinked_source_is_refused(tmp_path, clean_qcow2, images_dir):
    link = tmp_path / "link.qcow2"
    link.symlink_to(clean_qcow2)
    with pytest.raises(ImageRejected, match="is a symlink"):
        import_image_file(link, images_dir, "tiny", sha256_file(clean_qcow2))


def test_special_and_missing_sources_are_refused(tmp_path, images_dir):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ImageRejected, match="not a regular file"):
        import_image_file(fifo, images_dir, "tiny", "0" * 64)
    with pytest.raises(ImageRejected, match="does not exist"):
        import_image_file(tmp_path / "absent", images_dir, "tiny", "0" * 64)


def test_existing_image_is_never_replaced(clean_qcow2, images_dir):
    digest = sha256_file(clean_qcow2)
    first = import_image_file(clean_qcow2, images_dir, "tiny", digest)
    first_inode = first.path.stat().st_ino
    with pytest.raises(ImageError, match="already exists"):
        import_image_file(clean_qcow2, images_dir, "tiny", digest)
    assert first.path.stat().st_ino == first_inode
    assert os.listdir(images_dir) == ["tiny.qcow2"]


@pytest.mark.parametrize("name", ["", "Upper", "../etc", "a/b", "-dash", "dash-", "x" * 41])
def test_invalid_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid image name"):
        validate_image_name(name)
