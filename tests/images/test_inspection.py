import json
import os
import struct
import subprocess

import pytest

from tests.images.conftest import MIB, make_qcow2
from workers.drivers.images import ImageRejected, inspect_image
from workers.drivers.images.inspection import check_qemu_img_info


def rejection(path, **kwargs) -> str:
    with pytest.raises(ImageRejected) as caught:
        inspect_image(path, **kwargs)
    return caught.value.reason


def test_clean_qcow2_is_accepted(clean_qcow2):
    info = inspect_image(clean_qcow2, expected_format="qcow2")
    assert (info.format, info.virtual_size_bytes) == ("qcow2", MIB)
    assert info.file_size_bytes == clean_qcow2.stat().st_size


def test_clean_raw_is_accepted_declared_or_probed(clean_raw):
    assert inspect_image(clean_raw, expected_format="raw").virtual_size_bytes == MIB
    assert inspect_image(clean_raw).format == "raw"


def test_backing_file_is_refused(backing_qcow2):
    assert "has a backing file ('" in rejection(backing_qcow2)


def test_external_data_file_is_refused(data_file_qcow2):
    assert "has an external data-file ('" in rejection(data_file_qcow2)


def test_json_backing_name_is_refused(json_backing_qcow2):
    assert "json: pseudo-protocol" in rejection(json_backing_qcow2, expected_format="qcow2")


def test_json_data_file_name_is_refused(data_file_qcow2):
    # Patch the data-file header extension to carry a json: name of the same length.
    data = bytearray(data_file_qcow2.read_bytes())
    original = str(data_file_qcow2.parent / "data.bin").encode()
    hostile = b'json:{"x":"/etc/shadow"}'.ljust(len(original), b" ")
    data[data.index(original) : data.index(original) + len(original)] = hostile
    data_file_qcow2.write_bytes(bytes(data))
    assert "external data-file with a json: pseudo-protocol" in rejection(data_file_qcow2)


def test_json_in_path_is_refused(tmp_path, clean_qcow2):
    directory = tmp_path / "json:{}"
    directory.mkdir()
    moved = clean_qcow2.rename(directory / "disk.qcow2")
    assert "json:" in rejection(moved)


def test_huge_virtual_size_is_refused(tmp_path):
    huge = make_qcow2(tmp_path / "huge.qcow2", "3T")
    assert "exceeds the limit" in rejection(huge)


def test_virtual_size_limit_is_configurable(clean_qcow2):
    assert "exceeds the limit of 524288" in rejection(clean_qcow2, max_virtual_size_bytes=MIB // 2)


def test_virtual_size_smaller_than_the_data_is_refused(clean_qcow2):
    with open(clean_qcow2, "ab") as handle:
        handle.write(os.urandom(20 * MIB))
    assert "implausibly smaller than the file" in rejection(clean_qcow2)


def test_symlink_is_refused(tmp_path, clean_qcow2):
    link = tmp_path / "link.qcow2"
    link.symlink_to(clean_qcow2)
    assert "is a symlink" in rejection(link)


@pytest.mark.parametrize("make", [os.mkdir, os.mkfifo])
def test_non_regular_file_is_refused(tmp_path, make):
    path = tmp_path / "special"
    make(path)
    assert "is not a regular file" in rejection(path)


def test_missing_file_is_refused(tmp_path):
    assert "does not exist" in rejection(tmp_path / "absent.qcow2")


def test_text_file_is_not_a_raw_image(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a disk image\n")
    assert "not a multiple of 512" in rejection(text)


def test_other_formats_are_refused(tmp_path):
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "1M"], check=True)
    assert "format 'vmdk' is not one of qcow2, raw" in rejection(vmdk)


def test_unknown_declared_format_is_refused(clean_qcow2):
    assert "'vmdk' is not one of" in rejection(clean_qcow2, expected_format="vmdk")


def test_declared_format_must_match_the_content(clean_qcow2, clean_raw):
    assert "declared raw but the file has a qcow2 header" in rejection(
        clean_qcow2, expected_format="raw"
    )
    assert "declared qcow2 but the file has no qcow2 header" in rejection(
        clean_raw, expected_format="qcow2"
    )


def test_encrypted_qcow2_is_refused(tmp_path):
    # Legacy AES rather than LUKS: LUKS's key-derivation benchmark fails at random
    # ("Unable to get accurate CPU usage") on a busy machine.
    encrypted = make_qcow2(
        tmp_path / "encrypted.qcow2",
        "1M",
        "--object",
        "secret,id=sec0,data=passphrase",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0",
    )
    assert "encrypted" in rejection(encrypted)


def patch_header(path, offset, fmt, value):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))


def test_unknown_qcow2_version_is_refused(clean_qcow2):
    patch_header(clean_qcow2, 4, ">I", 4)
    assert "unknown qcow2 version 4" in rejection(clean_qcow2)


def test_truncated_qcow2_header_is_refused(tmp_path):
    truncated = tmp_path / "truncated.qcow2"
    truncated.write_bytes(b"QFI\xfb" + bytes(40))
    assert "truncated qcow2 header" in rejection(truncated)


def test_endless_header_extensions_are_refused(clean_qcow2):
    # Point the extension area at the end of the first cluster.
    patch_header(clean_qcow2, 100, ">I", 65536 - 4)
    assert "run past the first cluster" in rejection(clean_qcow2)


def test_image_qemu_img_cannot_read_is_refused(clean_qcow2):
    # An L1 table larger than qemu accepts.
    patch_header(clean_qcow2, 36, ">I", 1 << 28)
    assert rejection(clean_qcow2).startswith("qemu-img info failed")


def test_corrupt_flag_is_refused(clean_qcow2):
    patch_header(clean_qcow2, 72, ">Q", 1 << 1)
    assert "marked corrupt" in rejection(clean_qcow2)


def qemu_img_info(path) -> dict:
    output = subprocess.run(
        ["qemu-img", "info", "--output=json", "--force-share", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("backing_qcow2", "has a backing file"),
        ("json_backing_qcow2", "json: pseudo-protocol"),
        ("data_file_qcow2", "has an external data-file"),
    ],
)
def test_qemu_img_info_answer_is_checked_too(request, image, reason):
    """Second line of defence: the same images are refused from qemu-img's own
    report, should the header parser ever miss one."""
    with pytest.raises(ImageRejected, match=reason):
        check_qemu_img_info(qemu_img_info(request.getfixturevalue(image)), None)


def test_qemu_img_info_answer_of_a_clean_image_passes(clean_qcow2):
    check_qemu_img_info(qemu_img_info(clean_qcow2), "qcow2")


def test_unusable_qemu_img_output_is_refused(monkeypatch, clean_qcow2):
    # Fault injection: a qemu-img that prints garbage cannot be had for real.
    monkeypatch.setattr(
        "workers.drivers.images.inspection.run_limited", lambda args, limits: "{oops"
    )
    assert "no valid JSON" in rejection(clean_qcow2)
    monkeypatch.setattr("workers.drivers.images.inspection.run_limited", lambda args, limits: "[]")
    assert "no JSON object" in rejection(clean_qcow2)
