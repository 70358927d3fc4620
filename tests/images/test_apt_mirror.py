import pytest

from workers.drivers.images.apt_mirror import MirrorNotFound, find_debian_mirror

MIRROR = "http://mirror.example/debian"
DEB822 = """\
Types: deb-src
URIs: http://source.example/debian
Suites: bookworm

Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://disabled.example/debian
Suites: bookworm
Enabled: no

Types: deb
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By:
 /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
"""


@pytest.fixture
def apt_dirs(tmp_path):
    sources_dir = tmp_path / "sources.list.d"
    sources_dir.mkdir()
    return tmp_path / "sources.list", sources_dir


def test_deb822_source_serving_the_release_is_found(apt_dirs):
    sources_list, sources_dir = apt_dirs
    (sources_dir / "debian.sources").write_text(DEB822)
    (sources_dir / "old.list.disabled").write_text("deb http://nope.example bookworm main")
    assert find_debian_mirror("bookworm", sources_list, sources_dir) == MIRROR
    assert (
        find_debian_mirror("bookworm-security", sources_list, sources_dir)
        == "http://security.example/debian-security"
    )


def test_one_line_source_with_options_is_found(apt_dirs):
    sources_list, sources_dir = apt_dirs
    sources_list.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://source.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert find_debian_mirror("bookworm", sources_list, sources_dir) == MIRROR


def test_missing_release_is_an_error(apt_dirs):
    sources_list, sources_dir = apt_dirs
    (sources_dir / "debian.sources").write_text(DEB822)
    with pytest.raises(MirrorNotFound, match="trixie"):
        find_debian_mirror("trixie", sources_list, sources_dir)


def test_this_hosts_apt_names_a_bookworm_mirror():
    assert find_debian_mirror("bookworm").startswith("http")
