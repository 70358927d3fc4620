"""Generated key files: made once with mode 0600, the same for processes starting at once."""

import stat
from concurrent.futures import ThreadPoolExecutor

from cloud.keyfiles import read_or_create


def test_made_once_private_and_kept(tmp_path):
    path = tmp_path / "data" / "ssh" / "key"
    first = read_or_create(path, lambda: "one\n", dir_mode=0o700)
    assert first == "one\n" == read_or_create(path, lambda: "two\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not stat.S_IMODE(path.parent.stat().st_mode) & 0o077
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # no drafts left


def test_writers_at_once_all_read_the_winner(tmp_path):
    path = tmp_path / "fresh" / "key"
    with ThreadPoolExecutor(8) as pool:
        texts = set(
            pool.map(lambda n: read_or_create(path, lambda: f"key {n}\n" * 1000), range(16))
        )
    assert texts == {path.read_text()}
