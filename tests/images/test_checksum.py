import hashlib

import pytest

from workers.drivers.images import ChecksumMismatch, normalize_sha256, sha256_file, verify_sha256
from workers.drivers.images.checksum import CHUNK_BYTES


@pytest.fixture
def multi_chunk_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"strata" * CHUNK_BYTES)
    return path


def test_streamed_sha256_equals_hashlib(multi_chunk_file):
    expected = hashlib.sha256(multi_chunk_file.read_bytes()).hexdigest()
    assert sha256_file(multi_chunk_file) == expected


def test_verify_accepts_the_right_digest_in_any_case(multi_chunk_file):
    digest = sha256_file(multi_chunk_file)
    assert verify_sha256(multi_chunk_file, f" {digest.upper()}\n") == digest


def test_verify_refuses_a_mismatch(multi_chunk_file):
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch: expected 0000") as caught:
        verify_sha256(multi_chunk_file, "0" * 64)
    assert caught.value.actual == sha256_file(multi_chunk_file)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "0" * 63, "0" * 65])
def test_malformed_digest_is_refused(bad):
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        normalize_sha256(bad)
