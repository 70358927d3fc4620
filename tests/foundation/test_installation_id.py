"""STRATA_INSTALLATION_ID: from the environment, else generated once into the data
directory and kept (finding 9.14)."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.exceptions import ImproperlyConfigured

from cloud.settings import load_installation_id


def test_generated_once_and_kept(tmp_path, monkeypatch):
    """Finding 9.14: without the variable an id is made on first run, kept in the data
    directory, and the same on every later start."""
    monkeypatch.delenv("STRATA_INSTALLATION_ID", raising=False)
    data_dir = tmp_path / "data"
    first = load_installation_id(data_dir)
    assert first and first == load_installation_id(data_dir)
    assert (data_dir / "installation_id").read_text().strip() == first
    assert not stat.S_IMODE((data_dir / "installation_id").stat().st_mode) & 0o022
    assert [p.name for p in data_dir.iterdir()] == ["installation_id"]  # no drafts left
    assert load_installation_id(tmp_path / "other") != first


def test_processes_starting_at_once_agree(tmp_path, monkeypatch):
    """Finding 9.14: web and workers starting together on a fresh data dir get one id."""
    monkeypatch.delenv("STRATA_INSTALLATION_ID", raising=False)
    data_dir = tmp_path / "fresh"
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _n: load_installation_id(data_dir), range(16)))
    assert len(ids) == 1
    assert (data_dir / "installation_id").read_text().strip() in ids


def test_the_environment_wins(tmp_path, monkeypatch):
    """Finding 9.14: STRATA_INSTALLATION_ID names the installation; nothing is written."""
    monkeypatch.setenv("STRATA_INSTALLATION_ID", "suite-1_a")
    assert load_installation_id(tmp_path / "data") == "suite-1_a"
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("bad", ["a.b", "../x", "x" * 65, "-lead", "sp ace", "é"])
def test_a_bad_id_is_refused_by_name(tmp_path, monkeypatch, bad):
    """Finding 9.14: an id that could not mark a volume name is refused at start-up."""
    monkeypatch.setenv("STRATA_INSTALLATION_ID", bad)
    with pytest.raises(ImproperlyConfigured, match="STRATA_INSTALLATION_ID"):
        load_installation_id(tmp_path)
