"""Real disk images crafted with qemu-img for the inspection and import tests."""

import subprocess
from pathlib import Path

import pytest

MIB = 1024**2


def qemu_img(*args: str) -> None:
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def make_qcow2(path: Path, size: str = "1M", *options: str) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", *options, str(path), size)
    return path


@pytest.fixture
def clean_qcow2(tmp_path) -> Path:
    return make_qcow2(tmp_path / "clean.qcow2")


@pytest.fixture
def clean_raw(tmp_path) -> Path:
    path = tmp_path / "clean.raw"
    path.write_bytes(b"\x55" * 512 + bytes(MIB - 512))
    return path


@pytest.fixture
def backing_qcow2(tmp_path) -> Path:
    base = make_qcow2(tmp_path / "base.qcow2")
    return make_qcow2(tmp_path / "overlay.qcow2", "1M", "-b", str(base), "-F", "qcow2")


@pytest.fixture
def data_file_qcow2(tmp_path) -> Path:
    return make_qcow2(tmp_path / "data-file.qcow2", "1M", "-o", f"data_file={tmp_path}/data.bin")


@pytest.fixture
def json_backing_qcow2(tmp_path) -> Path:
    path = make_qcow2(tmp_path / "json-backing.qcow2")
    # -u only rewrites the header: qemu-img never opens the json: target here.
    qemu_img(
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        'json:{"driver":"file","filename":"/etc/shadow"}',
        str(path),
    )
    return path
